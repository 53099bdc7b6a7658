"""open_clip's layout: a model folder with ``open_clip_config.json`` beside the weights.

``open_clip_config.json`` is ``{"model_cfg": {...}, "preprocess_cfg": {...}}``: the model's
configuration as open_clip's ``CLIP`` takes it, and the preprocessing. The weights are a state dict
(safetensors or ``torch.save``) with OpenAI's key names (open_clip's ``CLIP`` keeps them; its
``CustomTextCLIP`` keeps the text tower under ``text.``, which ``arch.openai_key_names`` maps back).

clipfast builds the configurations open_clip builds with its ``CLIP`` class and OpenAI's towers (a
ViT or ModifiedResNet image tower, OpenAI's text transformer), GELU or QuickGELU, any head width
and MLP ratio; it refuses, with an ``ArchitectureError`` naming the file and the setting, the ones
it cannot compute exactly: other pooling, layer scale, custom attention blocks, another tokenizer,
no causal mask, extra LayerNorm arguments, timm or Hugging Face towers, CoCa, a logit bias, and
settings it does not know.

The weights file is the one open_clip picks (``factory._find_checkpoint_in_dir`` for a folder,
``open_clip_model.safetensors`` else ``open_clip_pytorch_model.bin`` for ``hf-hub:``). A file inside
such a folder (``.../open_clip_pytorch_model.bin``) comes with the folder's configuration.

Torch-free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from ..arch import CONFIG, Decided, Provenance
from ..errors import ArchitectureError, CheckpointError, ModelNotFoundError
from . import ModelSource, PreprocessConfig, rgb_normalization

if TYPE_CHECKING:
    from ..hub import HubRepo

__all__ = [
    "CONFIG_NAME",
    "check_buildable",
    "from_hub",
    "locate",
    "model_settings",
    "preprocess_config",
    "structure",
    "weights_in_folder",
]

CONFIG_NAME = "open_clip_config.json"

#: open_clip's preferred weights files in a folder, in its order (``_find_checkpoint_in_dir``).
PREFERRED = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
#: What open_clip takes from a Hugging Face Hub repository (``download_pretrained_from_hf``).
HUB_PREFERRED = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# open_clip's CLIPVisionCfg / CLIPTextCfg defaults for the settings clipfast reads.
_VISION_DEFAULTS = {
    "layers": 12,
    "width": 768,
    "head_width": 64,
    "mlp_ratio": 4.0,
    "patch_size": 16,
    "image_size": 224,
}
_TEXT_DEFAULTS = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
}

# Settings that change nothing clipfast computes at inference (training-only, or unused unless a
# refused setting is on): accepted whatever their value.
_VISION_INERT = {
    "patch_dropout",
    "output_tokens",
    "attn_pooler_queries",
    "attn_pooler_heads",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
}
_TEXT_INERT = {"output_tokens", "pad_id", "eos_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_TOP_INERT = {"init_logit_scale", "nonscalar_logit_scale", "output_dict", "cast_dtype"}

# Settings that must have the value OpenAI's towers compute (None/False/empty mean "off").
_SAME_AS_OPENAI: dict[str, Any] = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "final_ln_after_pool": False,
    "block_type": ("default",),
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "embed_cls": False,
    "no_causal_mask": False,
    "proj_bias": False,
    "timm_model_name": None,
    "hf_model_name": None,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "act_kwargs": None,
}
_WHY = {
    "ls_init_value": "layer scale",
    "attentional_pool": "an attentional pooler",
    "no_ln_pre": "no LayerNorm before the transformer",
    "final_ln_after_pool": "the final LayerNorm after pooling",
    "block_type": "a custom attention block",
    "qk_norm": "a custom attention block",
    "scaled_cosine_attn": "a custom attention block",
    "scale_heads": "a custom attention block",
    "scale_attn_inner": "a custom attention block",
    "scale_attn": "a custom attention block",
    "scale_fc": "a custom attention block",
    "embed_cls": "a text class token",
    "no_causal_mask": "bidirectional text attention",
    "proj_bias": "a text projection with a bias",
    "timm_model_name": "a timm image tower",
    "hf_model_name": "a Hugging Face text tower",
    "hf_tokenizer_name": "another tokenizer than clip's",
    "tokenizer_mode": "another tokenizer than clip's",
    "tokenizer_kwargs": "tokenizer options clip's tokenizer does not have",
    "act_kwargs": "activation arguments",
}


def _refuse(where: str, what: str, value: Any, why: str) -> ArchitectureError:
    reason = f"{what} = {json.dumps(value)} ({why})"
    error = ArchitectureError(
        f"{where}: {reason} is not a model clipfast computes exactly; clipfast builds OpenAI-structured "
        "CLIP models (ViT or ModifiedResNet image tower, OpenAI's text transformer, clip's tokenizer). "
        "Use open_clip for this model."
    )
    error.reason = reason  # type: ignore[attr-defined]
    return error


def _is_off(value: Any, off: Any) -> bool:
    if isinstance(off, tuple):  # the accepted values besides None
        return value is None or value in off
    if off is None:
        return value is None or value == {} or value == ""
    return value is None or value is False or value == off


def _check_tower(cfg: Mapping[str, Any], where: str, tower: str, known: set[str], inert: set[str]) -> None:
    for key, value in cfg.items():
        name = f"{tower}.{key}"
        if key in inert or key in known:
            continue
        if key in _SAME_AS_OPENAI:
            if not _is_off(value, _SAME_AS_OPENAI[key]):
                raise _refuse(where, name, value, _WHY[key])
            continue
        if key == "norm_kwargs":
            if value and (set(value) - {"eps"} or float(value.get("eps", 1e-5)) != 1e-5):
                raise _refuse(where, name, value, "LayerNorm arguments other than torch's eps=1e-5")
            continue
        if key == "pos_embed_type":
            if value not in ("learnable", "sin_cos_2d"):  # both are a stored (n, width) table
                raise _refuse(where, name, value, "another position embedding")
            continue
        raise _refuse(where, name, value, "a setting clipfast does not know")


def model_settings(model_cfg: Mapping[str, Any], where: str) -> dict[str, Decided]:
    """What an open_clip ``model_cfg`` decides, as ``(value, Provenance(config, where))`` pairs for
    ``arch.infer_architecture``. Raises ``ArchitectureError`` naming ``where`` for a configuration
    clipfast cannot build exactly (see the module's documentation)."""
    check_buildable(model_cfg, where)
    return structure(model_cfg, where)


def check_buildable(model_cfg: Mapping[str, Any], where: str) -> None:
    """Raise ``ArchitectureError`` naming ``where`` and the setting where ``model_cfg`` asks for
    something clipfast does not compute exactly."""
    if not isinstance(model_cfg, Mapping):
        raise ArchitectureError(f"{where}: model_cfg is a {type(model_cfg).__name__}, not an object")
    for key, value in model_cfg.items():
        if key in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text") or key in _TOP_INERT:
            continue
        if key == "init_logit_bias":
            if value is not None:
                raise _refuse(where, key, value, "a logit bias (a SigLIP-style model)")
            continue
        if key == "multimodal_cfg":
            raise _refuse(where, key, value, "a CoCa captioning model")
        raise _refuse(where, key, value, "a setting clipfast does not know")
    vision = model_cfg.get("vision_cfg")
    text = model_cfg.get("text_cfg")
    if not isinstance(vision, Mapping) or not isinstance(text, Mapping) or "embed_dim" not in model_cfg:
        raise ArchitectureError(f"{where}: model_cfg needs embed_dim, vision_cfg and text_cfg")
    _check_tower(vision, where, "vision_cfg", set(_VISION_DEFAULTS), _VISION_INERT | {"pool_type"})
    if vision.get("pool_type", "tok") != "tok":
        raise _refuse(
            where, "vision_cfg.pool_type", vision["pool_type"], "pooling other than the class token"
        )
    _check_tower(text, where, "text_cfg", set(_TEXT_DEFAULTS), _TEXT_INERT | {"pool_type", "proj_type"})
    if text.get("pool_type", "argmax") != "argmax":
        raise _refuse(
            where, "text_cfg.pool_type", text["pool_type"], "pooling other than at the end-of-text token"
        )
    if text.get("proj_type", "linear") != "linear":
        raise _refuse(where, "text_cfg.proj_type", text["proj_type"], "no or another text projection")


def structure(model_cfg: Mapping[str, Any], where: str) -> dict[str, Decided]:
    """The settings of an OpenAI-structured ``model_cfg`` (not checked: see :func:`check_buildable`)."""
    vision, text = model_cfg.get("vision_cfg"), model_cfg.get("text_cfg")
    if not isinstance(vision, Mapping) or not isinstance(text, Mapping) or "embed_dim" not in model_cfg:
        raise ArchitectureError(f"{where}: model_cfg needs embed_dim, vision_cfg and text_cfg")
    v = {**_VISION_DEFAULTS, **{k: vision[k] for k in _VISION_DEFAULTS if k in vision}}
    t = {**_TEXT_DEFAULTS, **{k: text[k] for k in _TEXT_DEFAULTS if k in text}}
    source = Provenance(CONFIG, where)
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    activation = "quick_gelu" if quick_gelu else "gelu"
    resnet = isinstance(v["layers"], (list, tuple))
    try:
        decided: dict[str, Decided] = {
            "embed_dim": (int(model_cfg["embed_dim"]), source),
            "vision_width": (int(v["width"]), source),
            "vision_head_width": (int(v["head_width"]), source),
            "image_resolution": (_side(v["image_size"], where, "vision_cfg.image_size", resnet), source),
            "context_length": (int(t["context_length"]), source),
            "vocab_size": (int(t["vocab_size"]), source),
            "transformer_width": (int(t["width"]), source),
            "transformer_heads": (int(t["heads"]), source),
            "transformer_layers": (int(t["layers"]), source),
            "transformer_mlp_width": (int(int(t["width"]) * float(t["mlp_ratio"])), source),
            "text_activation": (activation, source),
        }
        layers = v["layers"]
        if isinstance(layers, (list, tuple)):  # ModifiedResNet
            if len(layers) != 4:
                raise _refuse(where, "vision_cfg.layers", layers, "a ResNet of other than four stages")
            decided["vision_layers"] = (tuple(int(n) for n in layers), source)
        else:
            decided["vision_layers"] = (int(layers), source)
            decided["vision_patch_size"] = (_side(v["patch_size"], where, "vision_cfg.patch_size"), source)
            decided["vision_mlp_width"] = (int(int(v["width"]) * float(v["mlp_ratio"])), source)
            decided["vision_activation"] = (activation, source)
    except ArchitectureError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise ArchitectureError(f"{where}: a setting of model_cfg is not a number: {err}") from err
    return decided


def _side(value: Any, where: str, name: str, resnet: bool = False) -> int:
    """The side of a square image or patch, given as a number or, as open_clip also takes it for a
    ViT (``to_2tuple``), as ``[height, width]``. clipfast's towers are square: other pairs are
    refused, as is a pair for a ModifiedResNet (open_clip's fails to build: ``image_size // 32``)."""
    if not isinstance(value, (list, tuple)):
        return int(value)
    if resnet:
        raise _refuse(where, name, value, "a ModifiedResNet takes one number; open_clip's fails on a list")
    if len(value) != 2:
        raise _refuse(where, name, value, "not one number or [height, width]")
    height, width = int(value[0]), int(value[1])
    if height != width:
        what = "image" if name.endswith("image_size") else "patch"
        raise _refuse(where, name, value, f"a non-square {what}; clipfast's image tower is square")
    return height


def preprocess_config(preprocess_cfg: Any, where: str) -> PreprocessConfig:
    """open_clip's ``preprocess_cfg`` over its defaults (``PreprocessCfg``), checked as open_clip's
    ``image_transform`` checks it. Raises ``ArchitectureError`` naming ``where``."""
    cfg = preprocess_cfg if isinstance(preprocess_cfg, Mapping) else {}
    if preprocess_cfg is not None and not isinstance(preprocess_cfg, Mapping):
        raise ArchitectureError(
            f"{where}: preprocess_cfg is a {type(preprocess_cfg).__name__}, not an object"
        )
    cfg = {k: v for k, v in cfg.items() if v is not None}
    defaults = PreprocessConfig()

    def triple(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        value = cfg.get(name, default)
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
        try:
            return tuple(float(x) for x in values)
        except (TypeError, ValueError, OverflowError) as err:
            raise ArchitectureError(f"{where}: preprocess_cfg.{name} {value!r} is not numbers") from err

    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise ArchitectureError(
            f"{where}: preprocess_cfg.interpolation {interpolation!r} is not bicubic or bilinear"
        )
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "longest", "squash"):
        raise ArchitectureError(
            f"{where}: preprocess_cfg.resize_mode {resize_mode!r} is not shortest, longest or squash"
        )
    if cfg.get("mode", "RGB") != "RGB":
        raise ArchitectureError(f"{where}: preprocess_cfg.mode {cfg['mode']!r} is not RGB")
    try:
        fill_color = int(cfg.get("fill_color", 0))
    except (TypeError, ValueError, OverflowError) as err:
        raise ArchitectureError(
            f"{where}: preprocess_cfg.fill_color {cfg['fill_color']!r} is not a number"
        ) from err
    try:
        mean, std = rgb_normalization(triple("mean", defaults.mean), triple("std", defaults.std))
    except ValueError as err:
        raise ArchitectureError(f"{where}: preprocess_cfg.{err}") from err
    return PreprocessConfig(
        mean=mean,
        std=std,
        # open_clip's inference transform takes "random" as bicubic.
        interpolation="bilinear" if interpolation == "bilinear" else "bicubic",
        resize_mode=str(resize_mode),
        fill_color=fill_color,
        source=Provenance(CONFIG, where),
    )


def read_config(path: str) -> dict[str, Any]:
    """The parsed ``open_clip_config.json`` (an object with ``model_cfg``); CheckpointError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: not a readable open_clip configuration: {err}") from err
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise CheckpointError(f"{path}: no 'model_cfg' in this open_clip configuration")
    return config


def weights_in_folder(folder: str) -> Optional[str]:
    """The weights file open_clip loads from this folder: its preferred names in order, else the
    first ``*.safetensors``, ``*.bin``, ``*.pth`` by name (safetensors first), as
    ``factory._find_checkpoint_in_dir``."""
    names = set(os.listdir(folder))
    for name in PREFERRED:
        if name in names and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    candidates = sorted(
        (
            n
            for n in names
            if n.endswith((".safetensors", ".bin", ".pth")) and os.path.isfile(os.path.join(folder, n))
        ),
        key=lambda n: (not n.endswith(".safetensors"), n),
    )
    return os.path.join(folder, candidates[0]) if candidates else None


def _source(config_path: str, weights: str) -> ModelSource:
    config = read_config(config_path)
    decided = model_settings(config["model_cfg"], config_path)
    preprocess = preprocess_config(config.get("preprocess_cfg"), config_path)
    return ModelSource("open_clip", weights, decided, preprocess, config=config_path)


def _has_openai_keys(path: str) -> bool:
    """Whether the file's tensors carry OpenAI's / open_clip's names (not Hugging Face's)."""
    from ..checkpoint import inspect_checkpoint

    try:
        names = [t.name.removeprefix("module.") for t in inspect_checkpoint(path).tensors]
    except (ValueError, OSError):
        return True  # not readable: the reader reports it, naming the file
    return any(n.startswith(("visual.", "text.transformer.", "transformer.")) for n in names)


def locate(path: str) -> Optional[ModelSource]:
    """A folder with ``open_clip_config.json`` (its weights file as open_clip picks it), or a
    weights file with open_clip's names beside one."""
    if os.path.isdir(path):
        config_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(config_path):
            return None
        weights = weights_in_folder(path)
        if weights is None:
            raise ModelNotFoundError(
                f"{path}: {CONFIG_NAME} but no weights file (*.safetensors, *.bin, *.pth); open_clip "
                "would return a randomly initialised model here, clipfast refuses"
            )
        return _source(config_path, weights)
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_NAME)
    if os.path.isfile(path) and os.path.isfile(config_path) and _has_openai_keys(path):
        return _source(config_path, path)
    return None


def from_hub(repo: HubRepo) -> Optional[ModelSource]:
    """An ``hf-hub:`` repository with ``open_clip_config.json``: the weights ``hf-hub:`` takes in
    open_clip (``open_clip_model.safetensors``, else ``open_clip_pytorch_model.bin``)."""
    config_path = repo.file(CONFIG_NAME)
    if config_path is None:
        return None
    found = repo.first(HUB_PREFERRED)
    if found is None:
        raise repo.missing(
            "weights",
            HUB_PREFERRED,
            f" beside its {CONFIG_NAME}; open_clip would return a randomly initialised model here, "
            "clipfast refuses",
        )
    return _source(config_path, found[1])
