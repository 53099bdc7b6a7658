"""Hugging Face's layout: a ``CLIPModel`` folder (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, sharded through ``*.index.json`` too, ``preprocessor_config.json``).

The tensors carry transformers' names (``text_model.*``, ``vision_model.*``); they are read under
OpenAI's: q, k and v projections joined in that order into ``in_proj_*``, the two projections
transposed, ``fc1``/``fc2`` as ``c_fc``/``c_proj``, ``pre_layrnorm`` (sic) as ``ln_pre``. The
configuration decides what no shape shows, per tower: the activation (``hidden_act``), the head
count (``num_attention_heads``). Configurations clipfast cannot compute exactly (another activation
or LayerNorm epsilon, text pooling at a token that is not the largest id, a single tower, another
model type) are refused with an ``ArchitectureError`` naming ``config.json``; a configuration that
disagrees with the weights likewise. The weights file is the one ``from_pretrained`` picks:
``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin``,
``pytorch_model.bin.index.json``. An index's shards must be plain file names in the index's own
folder: an index never makes clipfast read a file elsewhere.

A weights file inside such a folder comes with the folder's configuration; a safetensors file with
transformers' names and no ``config.json`` beside it is read as a bare state dict (head counts from
open_clip's published configurations where the shapes match; ``load`` warns about what it assumed).

The parsers (:func:`parse_config`, :func:`model_settings`, :func:`parse_shard_index`,
:func:`preprocess_config`) are pure functions over bytes or parsed JSON, for fuzzing.

Torch-free at import.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ..arch import ACTIVATIONS, CONFIG, Decided, Provenance
from ..errors import ArchitectureError, CheckpointError, ModelNotFoundError
from . import OPENAI_MEAN, OPENAI_STD, ModelSource, PreprocessConfig

if TYPE_CHECKING:
    import torch

    from ..checkpoint import DtypeArg
    from ..hub import HubRepo

__all__ = [
    "CONFIG_NAME",
    "PREPROCESSOR_NAME",
    "WEIGHTS",
    "HuggingFaceSource",
    "from_hub",
    "locate",
    "model_settings",
    "openai_layout",
    "parse_config",
    "parse_shard_index",
    "preprocess_config",
    "tower_config",
]

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
#: The weights files ``from_pretrained`` looks for, in its order (safetensors first).
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
INDEX_SUFFIX = ".index.json"

#: transformers 5's CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults for what clipfast reads.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
PROJECTION_DIM_DEFAULT = 512

#: transformers' activation names -> clipfast's (``gelu`` is torch's exact, erf-based GELU there too).
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
#: torch.nn.LayerNorm's epsilon, the one clipfast's model computes with.
_LAYER_NORM_EPS = 1e-5
#: PIL's resampling filter numbers (``resample`` in preprocessor_config.json).
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


# --- configuration -------------------------------------------------------------------------------


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    """``config.json``'s bytes -> its object; CheckpointError naming ``where`` otherwise."""
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{where}: not a readable JSON configuration: {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the configuration is a {type(config).__name__}, not a JSON object")
    return config


def is_clip_config(config: Mapping[str, Any]) -> bool:
    """Whether a parsed ``config.json`` is a transformers configuration (of any model type): it
    names a model type or architectures, or holds CLIP's two tower configurations."""
    return any(key in config for key in ("model_type", "architectures", "text_config", "vision_config"))


def tower_config(config: Mapping[str, Any], tower: str, where: str) -> dict[str, Any]:
    """The settings of one tower (``"text"`` or ``"vision"``) as transformers 5's ``CLIPConfig``
    resolves them: its defaults, updated by ``<tower>_config``; where the legacy
    ``<tower>_config_dict`` is present, it wins for every setting, its missing ones taking the
    defaults (transformers completes it with the defaults before the update)."""
    defaults = TEXT_DEFAULTS if tower == "text" else VISION_DEFAULTS
    out = dict(defaults)
    for key in (f"{tower}_config", f"{tower}_config_dict"):
        part = config.get(key)
        if part is None:
            continue
        if not isinstance(part, Mapping):
            raise ArchitectureError(f"{where}: {key} is a {type(part).__name__}, not an object")
        if key.endswith("_dict"):
            out = dict(defaults)
        out.update(part)
    return out


def _refuse(where: str, what: str, value: Any, why: str) -> ArchitectureError:
    return ArchitectureError(
        f"{where}: {what} = {json.dumps(value)} ({why}) is not a model clipfast computes exactly; "
        "clipfast builds OpenAI-structured CLIP models. Use transformers for this model."
    )


def _integer(tower: Mapping[str, Any], key: str, where: str, name: str) -> int:
    value = tower.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArchitectureError(f"{where}: {name}.{key} = {json.dumps(value)} is not a positive integer")
    return value


def model_settings(config: Mapping[str, Any], where: str) -> dict[str, Decided]:
    """What a transformers ``CLIPModel`` configuration decides, as ``(value, Provenance(config,
    where))`` pairs for ``arch.infer_architecture``; the image size and context length too (checked
    against the weights by :class:`HuggingFaceSource`). Raises ``ArchitectureError`` naming
    ``where`` for a configuration clipfast cannot build exactly."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type is None and isinstance(architectures, list) and architectures:
        model_type = "clip" if "CLIPModel" in architectures else architectures[0]
    if model_type in ("clip_text_model", "clip_vision_model"):
        raise _refuse(where, "model_type", model_type, "a single tower, not a CLIPModel")
    if model_type not in (None, "clip"):
        raise _refuse(where, "model_type", model_type, "not a CLIPModel")
    if isinstance(architectures, list) and any(
        a != "CLIPModel" and isinstance(a, str) and a.startswith("CLIP") for a in architectures
    ):
        raise _refuse(
            where, "architectures", architectures, "a single tower or another head, not a CLIPModel"
        )
    text = tower_config(config, "text", where)
    vision = tower_config(config, "vision", where)
    for name, tower in (("text_config", text), ("vision_config", vision)):
        act = tower.get("hidden_act")
        if not isinstance(act, str) or act not in _ACTIVATIONS:
            raise _refuse(where, f"{name}.hidden_act", act, "an activation other than GELU or QuickGELU")
        eps = tower.get("layer_norm_eps")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or float(eps) != _LAYER_NORM_EPS:
            raise _refuse(where, f"{name}.layer_norm_eps", eps, "a LayerNorm epsilon other than 1e-5")
    if vision.get("num_channels") != 3:
        raise _refuse(where, "vision_config.num_channels", vision.get("num_channels"), "not an RGB model")
    vocab_size = _integer(text, "vocab_size", where, "text_config")
    eos = text.get("eos_token_id")
    # transformers pools the text at the first eos_token_id (at argmax for the legacy value 2);
    # clipfast, as clip, at the largest token id: the same where eos is the largest id.
    if not (isinstance(eos, int) and not isinstance(eos, bool) and eos in (2, vocab_size - 1)):
        raise _refuse(
            where,
            "text_config.eos_token_id",
            eos,
            f"text pooling at a token other than the largest id {vocab_size - 1}",
        )
    image_size = vision.get("image_size")
    if isinstance(image_size, (list, tuple)):
        if len(image_size) != 2 or image_size[0] != image_size[1]:
            raise _refuse(where, "vision_config.image_size", image_size, "a non-square image")
        image_size = image_size[0]
    patch_size = vision.get("patch_size")
    if isinstance(patch_size, (list, tuple)):
        if len(patch_size) != 2 or patch_size[0] != patch_size[1]:
            raise _refuse(where, "vision_config.patch_size", patch_size, "non-square patches")
        patch_size = patch_size[0]
    vision = {**vision, "image_size": image_size, "patch_size": patch_size}
    projection_dim = config.get("projection_dim", PROJECTION_DIM_DEFAULT)
    source = Provenance(CONFIG, where)
    decided: dict[str, Decided] = {
        "embed_dim": (
            _integer({"projection_dim": projection_dim}, "projection_dim", where, "config"),
            source,
        ),
        "vision_width": (_integer(vision, "hidden_size", where, "vision_config"), source),
        "vision_layers": (_integer(vision, "num_hidden_layers", where, "vision_config"), source),
        "vision_patch_size": (_integer(vision, "patch_size", where, "vision_config"), source),
        "vision_mlp_width": (_integer(vision, "intermediate_size", where, "vision_config"), source),
        "vision_heads": (_integer(vision, "num_attention_heads", where, "vision_config"), source),
        "vision_activation": (_ACTIVATIONS[vision["hidden_act"]], source),
        "image_resolution": (_integer(vision, "image_size", where, "vision_config"), source),
        "vocab_size": (vocab_size, source),
        "transformer_width": (_integer(text, "hidden_size", where, "text_config"), source),
        "transformer_layers": (_integer(text, "num_hidden_layers", where, "text_config"), source),
        "transformer_mlp_width": (_integer(text, "intermediate_size", where, "text_config"), source),
        "transformer_heads": (_integer(text, "num_attention_heads", where, "text_config"), source),
        "text_activation": (_ACTIVATIONS[text["hidden_act"]], source),
        "context_length": (_integer(text, "max_position_embeddings", where, "text_config"), source),
    }
    for tower_name, width, heads in (
        ("vision_config", "vision_width", "vision_heads"),
        ("text_config", "transformer_width", "transformer_heads"),
    ):
        if decided[width][0] % decided[heads][0] != 0:
            raise ArchitectureError(
                f"{where}: {tower_name}.num_attention_heads = {decided[heads][0]} does not divide "
                f"hidden_size = {decided[width][0]}"
            )
    assert all(
        value in ACTIVATIONS for value, _ in (decided["vision_activation"], decided["text_activation"])
    )
    return decided


def _size_of(value: Any, where: str, what: str) -> tuple[Optional[int], Optional[tuple[int, int]]]:
    """(shortest edge, (height, width)) of an image processor's ``size`` / ``crop_size``."""
    if isinstance(value, bool):
        raise ArchitectureError(f"{where}: {what} = {json.dumps(value)} is not a size")
    if isinstance(value, int):
        return value, (value, value)
    if isinstance(value, Mapping):
        if "shortest_edge" in value:
            edge = value["shortest_edge"]
            if isinstance(edge, int) and not isinstance(edge, bool):
                return edge, None
        elif "height" in value and "width" in value:
            h, w = value["height"], value["width"]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)):
                return None, (h, w)
    raise ArchitectureError(f"{where}: {what} = {json.dumps(value)} is not a size transformers reads")


def preprocess_config(processor: Mapping[str, Any], where: str) -> PreprocessConfig:
    """The preprocessing of a ``preprocessor_config.json`` (``CLIPImageProcessor``): mean, std,
    filter and size. Steps clipfast's preprocess does not take (a resize larger than the crop, no
    normalisation, another rescale or filter) are warned about, naming the file; clip's pipeline
    with the file's mean, std and size is used then."""

    def triple(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        value = processor.get(name, default)
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
        try:
            out = tuple(float(v) for v in values)
        except (TypeError, ValueError, OverflowError) as err:
            raise ArchitectureError(f"{where}: {name} = {value!r} is not numbers") from err
        if (
            len(out) != 3
            or not all(math.isfinite(v) for v in out)
            or (name == "image_std" and any(v == 0 for v in out))
        ):
            raise ArchitectureError(f"{where}: {name} = {value!r} is not three finite numbers (non-zero std)")
        return out

    unsupported: list[str] = []
    resample = processor.get("resample", 3)
    interpolation = _RESAMPLE.get(resample) if isinstance(resample, int) else None
    if interpolation is None:
        unsupported.append(f"resample = {resample!r} (clipfast resamples with bicubic)")
        interpolation = "bicubic"
    edge, exact = _size_of(processor.get("size", {"shortest_edge": 224}), where, "size")
    _, crop = _size_of(processor.get("crop_size", {"height": 224, "width": 224}), where, "crop_size")
    do_resize = processor.get("do_resize", True) is not False
    do_crop = processor.get("do_center_crop", True) is not False
    resize_mode = "shortest"
    size: Optional[int] = None
    if do_crop and crop is not None and crop[0] == crop[1]:
        size = crop[0]
        if do_resize and edge != size:
            got = f"resizes the shorter side to {edge}" if edge is not None else f"resizes to {exact}"
            unsupported.append(f"it {got} before the {size}x{size} crop")
    elif not do_crop and do_resize and exact is not None and exact[0] == exact[1]:
        resize_mode, size = "squash", exact[0]
    else:
        unsupported.append("a resize and crop other than a square centre crop")
    if not do_resize:
        unsupported.append("no resize")
    if processor.get("do_rescale", True) is False:
        unsupported.append("no rescale to [0, 1]")
    factor = processor.get("rescale_factor", 1 / 255)
    if not isinstance(factor, (int, float)) or abs(float(factor) - 1 / 255) > 1e-12:
        unsupported.append(f"rescale_factor = {factor!r}")
    normalize = processor.get("do_normalize", True) is not False
    if not normalize:
        unsupported.append("no normalisation")
    if unsupported:
        warnings.warn(
            f"{where}: clipfast's preprocess does not do what this image processor does "
            f"({'; '.join(unsupported)}); it resizes the shorter side and centre-crops with the file's "
            "mean and std (clip's pipeline)",
            UserWarning,
            stacklevel=3,
        )
    return PreprocessConfig(
        mean=triple("image_mean", OPENAI_MEAN),
        std=triple("image_std", OPENAI_STD),
        interpolation=interpolation,
        resize_mode=resize_mode,
        size=size,
        source=Provenance(CONFIG, where),
    )


# --- shards --------------------------------------------------------------------------------------


def _plain_file_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not name.startswith("~")
    )


def parse_shard_index(data: bytes, where: str) -> dict[str, str]:
    """An ``*.index.json``'s ``weight_map`` (tensor name -> shard file). Every shard must be a
    plain file name (no folder, no ``..``): shards are read from the index's own folder only.
    CheckpointError naming ``where`` otherwise."""
    try:
        index = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{where}: not a readable shard index: {err}") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{where}: a shard index needs a non-empty 'weight_map' object")
    for name, shard in weight_map.items():
        if not _plain_file_name(shard):
            raise CheckpointError(
                f"{where}: weight_map sends {name!r} to {shard!r}, which is not a file name in the "
                "index's folder (shards are never read from elsewhere)"
            )
        if shard.endswith(INDEX_SUFFIX):
            raise CheckpointError(f"{where}: weight_map sends {name!r} to another index, {shard!r}")
    return {str(name): str(shard) for name, shard in weight_map.items()}


# --- key names -----------------------------------------------------------------------------------


class Target(NamedTuple):
    """Where a transformers tensor goes: OpenAI's key, which third of ``in_proj`` (q, k, v), transposed."""

    name: str
    part: Optional[int] = None
    transpose: bool = False


_BLOCK = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)$")
_LAYER = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")
_TOP = {
    "text_model.embeddings.token_embedding.weight": Target("token_embedding.weight"),
    "text_model.embeddings.position_embedding.weight": Target("positional_embedding"),
    "text_model.final_layer_norm.weight": Target("ln_final.weight"),
    "text_model.final_layer_norm.bias": Target("ln_final.bias"),
    "text_projection.weight": Target("text_projection", transpose=True),
    "vision_model.embeddings.class_embedding": Target("visual.class_embedding"),
    "vision_model.embeddings.patch_embedding.weight": Target("visual.conv1.weight"),
    "vision_model.embeddings.position_embedding.weight": Target("visual.positional_embedding"),
    "vision_model.pre_layrnorm.weight": Target("visual.ln_pre.weight"),
    "vision_model.pre_layrnorm.bias": Target("visual.ln_pre.bias"),
    "vision_model.post_layernorm.weight": Target("visual.ln_post.weight"),
    "vision_model.post_layernorm.bias": Target("visual.ln_post.bias"),
    "visual_projection.weight": Target("visual.proj", transpose=True),
    "logit_scale": Target("logit_scale"),
}
#: Buffers older transformers saved, which carry no weights (``arange`` position ids).
_DROPPED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def target_of(key: str) -> Optional[Target]:
    """Where transformers' tensor ``key`` goes under OpenAI's names (None: not a CLIPModel tensor)."""
    if key in _TOP:
        return _TOP[key]
    m = _LAYER.match(key)
    if m is None:
        return None
    tower, index, rest = m.groups()
    prefix = ("visual." if tower == "vision_model" else "") + f"transformer.resblocks.{index}."
    if rest in _BLOCK:
        return Target(prefix + _BLOCK[rest])
    qkv = _QKV.match(rest)
    if qkv is not None:
        return Target(f"{prefix}attn.in_proj_{qkv.group(2)}", part="qkv".index(qkv.group(1)))
    return None


def looks_like_hf(keys: Sequence[str]) -> bool:
    """Whether tensor names are transformers' CLIPModel names."""
    return any(k.startswith("text_model.") for k in keys) and any(k.startswith("vision_model.") for k in keys)


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, ...]


def openai_layout(
    shapes: Mapping[str, tuple[int, ...]], where: str
) -> OrderedDict[str, tuple[tuple[str, ...], bool, tuple[int, ...]]]:
    """OpenAI's key -> (transformers' keys it is made of, transposed, its shape), from transformers'
    keys and shapes. CheckpointError naming ``where`` for a tensor that is not a CLIPModel's, an
    incomplete or mismatched q/k/v triple."""
    parts: dict[str, dict[int, str]] = {}
    out: OrderedDict[str, tuple[tuple[str, ...], bool, tuple[int, ...]]] = OrderedDict()
    unknown: list[str] = []
    for key, shape in shapes.items():
        if key in _DROPPED:
            continue
        target = target_of(key)
        if target is None:
            unknown.append(key)
            continue
        if target.part is None:
            if target.transpose and len(shape) != 2:
                raise CheckpointError(f"{where}: {key!r} has shape {list(shape)}, expected 2 dimensions")
            out[target.name] = (
                (key,),
                target.transpose,
                tuple(reversed(shape)) if target.transpose else shape,
            )
        else:
            parts.setdefault(target.name, {})[target.part] = key
            out.setdefault(target.name, ((), False, ()))  # keeps the state dict's order
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise CheckpointError(
            f"{where}: tensors {unknown[:3]}{more} are not a transformers CLIPModel's (a single tower, "
            "another model, or a model with heads clipfast does not build)"
        )
    for name, found in parts.items():
        missing = [f"{'qkv'[i]}_proj" for i in range(3) if i not in found]
        if missing:
            raise CheckpointError(
                f"{where}: {name} needs q, k and v projections; {', '.join(missing)} missing"
            )
        keys = tuple(found[i] for i in range(3))
        shape = shapes[keys[0]]
        if any(shapes[k] != shape for k in keys) or not shape:
            raise CheckpointError(
                f"{where}: the q, k, v projections of {name} differ in shape: "
                + ", ".join(f"{k} {list(shapes[k])}" for k in keys)
            )
        out[name] = (keys, False, (3 * shape[0], *shape[1:]))
    return out


# --- reading -------------------------------------------------------------------------------------


class HuggingFaceSource(ModelSource):
    """A transformers CLIPModel's weights (one file or shards), read under OpenAI's key names."""

    def __init__(
        self,
        path: str,
        shards: Mapping[str, Optional[frozenset[str]]],
        decided: dict[str, Decided],
        preprocess: Optional[PreprocessConfig],
        config: Optional[str],
    ) -> None:
        super().__init__("huggingface", path, decided, preprocess, config=config, direct=False)
        #: weights file -> the tensor names to take from it (None: all of them).
        self.shards = dict(shards)
        self._layout: Optional[OrderedDict[str, tuple[tuple[str, ...], bool, tuple[int, ...]]]] = None
        self._readers: Optional[dict[str, tuple[Any, dict[str, int]]]] = None

    def readers(self) -> dict[str, tuple[Any, dict[str, int]]]:
        """Each weights file's reader and the index of each wanted tensor in it (opened once)."""
        if self._readers is None:
            from ..checkpoint import _open

            readers: dict[str, tuple[Any, dict[str, int]]] = {}
            for file, wanted in self.shards.items():
                reader = _open(file)
                found = {row[0]: i for i, row in enumerate(reader.tensors)}
                if wanted is not None:
                    missing = sorted(wanted - set(found))
                    if missing:
                        raise CheckpointError(
                            f"{self.path}: the index puts {missing[:3]} in {os.path.basename(file)}, "
                            f"which does not hold {'it' if len(missing) == 1 else 'them'}"
                        )
                    found = {name: found[name] for name in wanted}
                readers[file] = (reader, found)
            self._readers = readers
        return self._readers

    def _hf_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for reader, found in self.readers().values():
            rows = reader.tensors
            shapes.update({name: tuple(rows[i][2]) for name, i in found.items()})
        return shapes

    def key_map(self) -> OrderedDict[str, tuple[tuple[str, ...], bool, tuple[int, ...]]]:
        """OpenAI's key -> (transformers' keys, transposed, shape); computed once."""
        if self._layout is None:
            layout = openai_layout(self._hf_shapes(), self.path)
            self._check_sizes(layout)
            self._layout = layout
        return self._layout

    def _check_sizes(self, layout: Mapping[str, tuple[tuple[str, ...], bool, tuple[int, ...]]]) -> None:
        """The image size and context length of the configuration against the position embeddings
        (transformers refuses weights of other sizes; so does clipfast)."""
        for setting, key, rows_of in (
            ("image_resolution", "visual.positional_embedding", "vision_config.image_size"),
            ("context_length", "positional_embedding", "text_config.max_position_embeddings"),
        ):
            if setting not in self.decided or key not in layout:
                continue
            value, where = self.decided[setting]
            rows = layout[key][2][0]
            if setting == "image_resolution":
                patch = int(self.decided["vision_patch_size"][0])
                if 0 < value < patch:  # transformers builds it; its patch convolution fails on any image
                    raise ArchitectureError(
                        f"{where.detail}: {rows_of} = {value} is smaller than one {patch}-pixel patch "
                        "(no patch grid): the model cannot encode an image"
                    )
                # transformers floors the grid of a size between multiples of the patch, as its
                # strided patch convolution does.
                expected = (value // patch) ** 2 + 1 if value >= patch > 0 else -1
            else:
                expected = value
            if rows != expected:
                raise ArchitectureError(
                    f"{where.detail}: {rows_of} = {value} does not fit the weights ({key} has {rows} rows): "
                    "the configuration does not describe these weights"
                )

    def files(self) -> list[str]:
        return list(self.shards)

    def declared_shapes(self) -> Mapping[str, Any]:
        return {name: _Shape(shape) for name, (_, _, shape) in self.key_map().items()}

    def read(self, *, mmap: bool, dtype: DtypeArg) -> OrderedDict[str, torch.Tensor]:
        """The tensors under OpenAI's names, each converted once by the Rust reader into its final
        dtype, in parallel with the GIL released (q, k and v straight into their thirds of
        ``in_proj``; the two projections transposed afterwards, small). With ``mmap``, a tensor
        whose dtype does not change and needs no joining stays a view of the mapped file."""
        import torch

        from ..checkpoint import _read_parsed, allocate

        readers = self.readers()
        where: dict[str, tuple[Any, Any, Any]] = {}  # transformers' key -> (reader, row, storage)
        for reader, found in readers.values():
            rows, storages = reader.tensors, reader.storages
            for key, i in found.items():
                where[key] = (reader, rows[i], storages[rows[i][4]])
        # Each file's tensors as views of its map, made from the parse above (the path may name
        # another file by now: a new version renamed over it).
        mapped: dict[int, OrderedDict[str, torch.Tensor]] = {}

        def views_of(reader: Any) -> OrderedDict[str, torch.Tensor]:
            if id(reader) not in mapped:
                mapped[id(reader)] = _read_parsed(reader, mmap=True)
            return mapped[id(reader)]

        views: dict[str, torch.Tensor] = {}
        if mmap:
            for reader, found in readers.values():
                views.update({key: views_of(reader)[key] for key in found})
        jobs: dict[int, tuple[Any, list[tuple[int, int, str, torch.Tensor]]]] = {}
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        # name -> (its sources, transposed, shape as stored, dtype) for the tensors that are filled
        filled: dict[str, tuple[list[tuple[Any, Any, Any]], bool, tuple[int, ...], torch.dtype]] = {}
        for name, (keys, transpose, shape) in self.key_map().items():
            sources = [where[k] for k in keys]
            stored = sources[0][1][1]
            target = _target(dtype, name, getattr(torch, stored))
            if len(keys) == 1 and not transpose and mmap and str(target) == f"torch.{stored}":
                out[name] = views[keys[0]]
                continue
            out[name] = torch.empty(0)  # keeps the key order; replaced below
            filled[name] = (sources, transpose, shape if not transpose else tuple(reversed(shape)), target)
        # One allocation for all (huge pages where the kernel has them: see checkpoint.allocate).
        buffers = allocate([(shape, target) for _, _, shape, target in filled.values()])
        for (name, (sources, transpose, _, _)), full in zip(filled.items(), buffers):
            rows = full.shape[0] // len(sources) if full.ndim else 0
            for i, (reader, row, storage) in enumerate(sources):
                destination = full[i * rows : (i + 1) * rows] if len(sources) > 1 else full
                span = _byte_span(row, storage)
                if span is None:  # a strided tensor of a torch.save file: copied by torch
                    destination.copy_(views_of(reader)[row[0]])
                elif destination.numel():
                    jobs.setdefault(id(reader), (reader, []))[1].append((*span, row[1], destination))
            out[name] = full.t() if transpose else full
        for reader, batch in jobs.values():
            reader.convert(batch)
        return out


def _byte_span(row: Any, storage: Any) -> Optional[tuple[int, int]]:
    """The bytes of a reader row's tensor in the file when it is contiguous, else None."""
    _, dtype, shape, stride, _, offset, *_ = row
    from ..checkpoint import _itemsize

    itemsize = _itemsize(dtype)
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return None
        expected *= n
    start = storage[2] + offset * itemsize
    end = start + expected * itemsize
    return (start, end) if end <= storage[3] else None


def _target(dtype: DtypeArg, name: str, stored: torch.dtype) -> torch.dtype:
    """The dtype tensor ``name`` (stored as ``stored``) gets, as ``checkpoint.read_state_dict`` decides."""
    import torch

    if dtype is None or not stored.is_floating_point:
        return stored
    wanted = dtype if isinstance(dtype, torch.dtype) else dtype(name, stored)
    if wanted is None:
        return stored
    if not isinstance(wanted, torch.dtype) or not wanted.is_floating_point:
        raise TypeError(f"dtype for {name!r} must be a floating torch.dtype, not {wanted!r}")
    return wanted


# --- finding the files ---------------------------------------------------------------------------


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read: {err.strerror or err}") from err


def _shards(index_path: str, find: Any) -> dict[str, Optional[frozenset[str]]]:
    """Shard file -> tensor names it holds, from an index; ``find(name)`` gives a shard's local path
    or None (missing: CheckpointError naming the index and the shard)."""
    weight_map = parse_shard_index(_read_bytes(index_path), index_path)
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    out: dict[str, Optional[frozenset[str]]] = {}
    for shard, names in by_shard.items():
        path = find(shard)
        if path is None:
            raise CheckpointError(f"{index_path}: names shard {shard!r}, which is missing")
        out[path] = frozenset(names)
    return out


def _source(
    weights: str, config_path: Optional[str], preprocessor: Optional[str], find: Any
) -> HuggingFaceSource:
    decided: dict[str, Decided] = {}
    if config_path is not None:
        decided = model_settings(parse_config(_read_bytes(config_path), config_path), config_path)
    preprocess = None
    if preprocessor is not None:
        processor = parse_config(_read_bytes(preprocessor), preprocessor)
        preprocess = preprocess_config(processor, preprocessor)
    shards: dict[str, Optional[frozenset[str]]]
    if weights.endswith(INDEX_SUFFIX):
        shards = _shards(weights, find)
    else:
        shards = {weights: None}
    return HuggingFaceSource(weights, shards, decided, preprocess, config_path)


def _in_folder(folder: str) -> Any:
    def find(name: str) -> Optional[str]:
        path = os.path.join(folder, name)
        return path if _plain_file_name(name) and os.path.isfile(path) else None

    return find


def _config_of_folder(folder: str, strict: bool) -> Optional[str]:
    """The folder's ``config.json`` when it is a transformers configuration. An unreadable one is a
    CheckpointError when ``strict`` (the folder itself was named), else not the folder's layout."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    try:
        return path if is_clip_config(parse_config(_read_bytes(path), path)) else None
    except CheckpointError:
        if strict:
            raise
        return None


def _safetensors_keys(path: str) -> list[str]:
    """The tensor names of a safetensors file, from its header alone ([] when it is not one)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return []
            (size,) = struct.unpack("<Q", head)
            if size < 2 or size > 100 * 2**20:
                return []
            header = json.loads(f.read(size))
    except (OSError, ValueError, RecursionError):
        return []
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []


def locate(path: str) -> Optional[ModelSource]:
    """A folder with a transformers ``config.json`` (its weights as ``from_pretrained`` picks them),
    a weights file or shard index inside one, or a safetensors file with transformers' names."""
    if os.path.isdir(path):
        config_path = _config_of_folder(path, strict=True)
        if config_path is None:
            return None
        find = _in_folder(path)
        weights = next((p for p in map(find, WEIGHTS) if p is not None), None)
        if weights is None:
            raise ModelNotFoundError(
                f"{path}: a Hugging Face folder ({CONFIG_NAME}) without weights: none of {', '.join(WEIGHTS)}"
            )
        return _source(weights, config_path, find(PREPROCESSOR_NAME), find)
    if not os.path.isfile(path):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    config_path = _config_of_folder(folder, strict=False)
    if path.endswith(INDEX_SUFFIX):
        pass  # an index names transformers' tensors
    elif config_path is not None:
        from ..checkpoint import inspect_checkpoint

        try:
            names = [t.name for t in inspect_checkpoint(path).tensors]
        except (ValueError, OSError):
            return None  # not readable: the reader of the layout that takes it says why
        if not looks_like_hf(names):
            return None
    elif not (path.endswith(".safetensors") and looks_like_hf(_safetensors_keys(path))):
        return None
    find = _in_folder(folder)
    return _source(path, config_path, find(PREPROCESSOR_NAME) if config_path else None, find)


def from_hub(repo: HubRepo) -> Optional[ModelSource]:
    """An ``hf-hub:`` repository with a transformers ``config.json`` and CLIPModel weights
    (downloaded, or from the cache offline), as ``from_pretrained`` would take them."""
    config_path = repo.file(CONFIG_NAME)
    if config_path is None or not is_clip_config(parse_config(_read_bytes(config_path), config_path)):
        return None
    found = repo.first(WEIGHTS)
    if found is None:
        raise repo.missing("weights", WEIGHTS, f" beside its {CONFIG_NAME}")
    return _source(found[1], config_path, repo.file(PREPROCESSOR_NAME), repo.file)
