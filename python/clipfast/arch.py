"""The hyperparameters of a CLIP model, read from the shapes of its state dict, and where each
setting no shape shows was decided from.

openai/CLIP's ``build_model`` reads the shapes the same way; this version checks every key it uses
and says which key or shape is wrong instead of failing with a ``KeyError`` or an assertion deep
inside torch. Three settings cannot be seen in any shape: the activation of each tower (QuickGELU
or GELU) and the head counts (the width of each attention head). They are decided, in this order,
from explicit arguments, from the configuration that travels with the weights (an
``open_clip_config.json`` / ``config.json`` beside the file, safetensors metadata), from the
TorchScript archive (OpenAI's: QuickGELU, 64-wide heads), and for a bare file from open_clip's
published configurations whose shapes match (head widths only), else from defaults (64-wide heads,
clip.load's QuickGELU), about which ``load`` warns. ``Architecture.sources`` records the decision.

Torch-free at import: ``clipfast inspect`` uses this module without torch.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Optional, TypeVar, Union

from .errors import ArchitectureError

__all__ = [
    "ACTIVATIONS",
    "WRAPPER_PREFIX",
    "Architecture",
    "Provenance",
    "infer_architecture",
    "openai_key_names",
    "without_wrapper_prefix",
]

# The buffers OpenAI's TorchScript archives carry beside the weights; they are not model state.
ARCHIVE_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")

#: The prefix (Distributed)DataParallel gives every key of the model it wraps; training checkpoints
#: (open_clip's among them) are often saved from the wrapper.
WRAPPER_PREFIX = "module."

#: The activations of the transformer MLPs clipfast computes: OpenAI's sigmoid approximation
#: ``x * sigmoid(1.702 x)`` and the exact (erf) GELU of ``torch.nn.GELU()``.
ACTIVATIONS = ("quick_gelu", "gelu")

#: The text-tower keys open_clip's CustomTextCLIP keeps under ``text.`` (its CLIP, and OpenAI, at the top).
CUSTOM_TEXT_KEYS = ("text_projection", "positional_embedding", "token_embedding", "transformer.", "ln_final")

_T = TypeVar("_T")


class Provenance(NamedTuple):
    """Where a setting was decided from: ``kind`` is one of

    - ``"argument"``: an explicit argument (``quick_gelu=``, ``vision_heads=``, ``transformer_heads=``);
    - ``"config"``: the configuration travelling with the weights (``detail`` names the file, or
      the safetensors file whose metadata holds it);
    - ``"torchscript"``: OpenAI's TorchScript archive (QuickGELU, 64-wide heads);
    - ``"published"``: the shapes match a published open_clip configuration (``detail`` names it);
    - ``"shapes"``: read from the tensors' shapes;
    - ``"default"``: nothing said; a default was assumed (``load`` warns)."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


ARGUMENT = "argument"
CONFIG = "config"
TORCHSCRIPT = "torchscript"
PUBLISHED = "published"
SHAPES = "shapes"
DEFAULT = "default"

#: A setting decided by a source: (value, where from).
Decided = tuple[Any, Provenance]


def _mapping_key(keys: Iterable[str]) -> tuple[bool, bool]:
    """(strip the DataParallel prefix, move CustomTextCLIP's ``text.*`` keys to the top) for these keys."""
    keys = list(keys)
    prefixed = bool(keys) and all(key.startswith(WRAPPER_PREFIX) for key in keys)
    names = [key[len(WRAPPER_PREFIX) :] for key in keys] if prefixed else keys
    custom_text = "text.text_projection" in names and "text_projection" not in names
    return prefixed, custom_text


def openai_key_names(keys: Iterable[str]) -> Mapping[str, str]:
    """Each key -> its name in OpenAI's layout: DataParallel's ``module.`` prefix taken off when
    every key has it; open_clip's CustomTextCLIP layout (``text.transformer...``) moved to the top
    level as OpenAI's CLIP (and open_clip's CLIP) keep it. Other keys keep their names."""
    keys = list(keys)
    prefixed, custom_text = _mapping_key(keys)
    out: dict[str, str] = {}
    for key in keys:
        name = key[len(WRAPPER_PREFIX) :] if prefixed else key
        if custom_text and name.startswith("text.") and name[5:].startswith(CUSTOM_TEXT_KEYS):
            name = name[5:]
        out[key] = name
    return out


def without_wrapper_prefix(tensors: Mapping[str, _T]) -> OrderedDict[str, _T]:
    """``tensors`` under OpenAI's key names (see :func:`openai_key_names`): the DataParallel prefix
    taken off when every key has it (a mapping where only some keys have it is left as it is, and is
    not a CLIP state dict), open_clip's CustomTextCLIP text keys moved to the top."""
    names = openai_key_names(tensors)
    if all(key == name for key, name in names.items()):
        return tensors if isinstance(tensors, OrderedDict) else OrderedDict(tensors)
    return OrderedDict((names[key], value) for key, value in tensors.items())


@dataclass(frozen=True)
class Architecture:
    """What a CLIP checkpoint's tensors (and the configuration travelling with them) say about the
    model: the arguments of ``clip.model.CLIP``, plus the vision head count, the patch grid, the MLP
    widths and the activation of each tower; ``sources`` says where each setting was decided from.

    ``vision_mlp_width`` / ``transformer_mlp_width`` default to 4x the width (OpenAI's), the
    activations to QuickGELU (OpenAI's). A ModifiedResNet image tower has neither (``None``)."""

    embed_dim: int
    image_resolution: int
    vision_layers: Union[int, tuple[int, int, int, int]]
    vision_width: int
    vision_patch_size: Optional[int]
    vision_grid: int
    vision_heads: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    vision_mlp_width: Optional[int] = None
    transformer_mlp_width: Optional[int] = None
    vision_activation: Optional[str] = "quick_gelu"
    text_activation: str = "quick_gelu"
    #: setting name -> where it was decided from (not part of equality or the repr).
    sources: Mapping[str, Provenance] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if self.is_vit:
            if self.vision_mlp_width is None:
                object.__setattr__(self, "vision_mlp_width", 4 * self.vision_width)
        else:
            object.__setattr__(self, "vision_mlp_width", None)
            object.__setattr__(self, "vision_activation", None)
        if self.transformer_mlp_width is None:
            object.__setattr__(self, "transformer_mlp_width", 4 * self.transformer_width)
        for name in ("vision_activation", "text_activation"):
            value = getattr(self, name)
            if value is not None and value not in ACTIVATIONS:
                raise ArchitectureError(f"{name}={value!r} is not one of {ACTIVATIONS}")
        object.__setattr__(self, "sources", dict(self.sources))

    @property
    def is_vit(self) -> bool:
        """True for a VisionTransformer image tower, False for a ModifiedResNet."""
        return self.vision_patch_size is not None

    def clip_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``clip.model.CLIP`` (which has no ``vision_heads`` argument)."""
        return {
            "embed_dim": self.embed_dim,
            "image_resolution": self.image_resolution,
            "vision_layers": self.vision_layers,
            "vision_width": self.vision_width,
            "vision_patch_size": self.vision_patch_size,
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "transformer_width": self.transformer_width,
            "transformer_heads": self.transformer_heads,
            "transformer_layers": self.transformer_layers,
        }

    def model_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``clipfast.model.CLIP``: clip's, and the settings it adds."""
        return {
            **self.clip_arguments(),
            "vision_heads": self.vision_heads,
            "vision_mlp_width": self.vision_mlp_width,
            "transformer_mlp_width": self.transformer_mlp_width,
            "vision_activation": self.vision_activation or "quick_gelu",
            "text_activation": self.text_activation,
        }

    def settings(self) -> dict[str, Any]:
        """Every hyperparameter by name (the fields without ``sources``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}

    def assumed(self) -> list[str]:
        """The settings decided by a default, which no argument, configuration or shape showed."""
        return [name for name, where in self.sources.items() if where.kind == DEFAULT]


class _Shapes:
    """Shape look-ups that raise ArchitectureError naming the source file and the key."""

    def __init__(self, state_dict: Mapping[str, Any], source: Optional[str]) -> None:
        self.state_dict = state_dict
        self.where = f"{source}: " if source else ""

    def error(self, message: str) -> ArchitectureError:
        return ArchitectureError(f"{self.where}{message}")

    def shape(self, key: str, ndim: int) -> tuple[int, ...]:
        if key not in self.state_dict:
            raise self.error(f"missing tensor {key!r}; not a CLIP checkpoint in OpenAI's layout")
        value = self.state_dict[key]
        shape = getattr(value, "shape", None)
        if shape is None:
            raise self.error(f"{key!r} is not a tensor (found {type(value).__name__})")
        shape = tuple(int(d) for d in shape)
        if len(shape) != ndim:
            raise self.error(f"{key!r} has shape {list(shape)}, expected {ndim} dimensions")
        if any(d <= 0 for d in shape):
            raise self.error(f"{key!r} has an empty shape {list(shape)}")
        return shape

    def block_count(self, prefix: str) -> int:
        """The number of numbered blocks ``<prefix><i>.*``, which must be 0..n-1 without gaps."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        indices = {int(m.group(1)) for key in self.state_dict if (m := pattern.match(key))}
        if not indices:
            raise self.error(f"no tensors named {prefix}<i>.*")
        missing = sorted(set(range(max(indices) + 1)) - indices)
        if missing:
            raise self.error(f"block {prefix}{missing[0]} is missing (found up to {prefix}{max(indices)})")
        return len(indices)

    def square_grid(self, key: str) -> tuple[int, int]:
        """(grid, width) of a positional embedding of grid**2 + 1 rows (the class token first)."""
        rows, width = self.shape(key, 2)
        if rows == 1:  # open_clip builds such a tower (image smaller than a patch); it cannot run
            unit = "32 pixels (a ModifiedResNet's)" if key.startswith("visual.attnpool") else "one patch"
            raise self.error(
                f"{key!r} has 1 row, the class token's alone: no grid (weights for an image smaller "
                f"than {unit}, which the model cannot encode)"
            )
        grid = math.isqrt(max(rows - 1, 0))
        if grid == 0 or grid * grid + 1 != rows:
            raise self.error(f"{key!r} has {rows} rows, which is not grid**2 + 1 for a square grid")
        return grid, width

    def mlp_width(self, block: str, width: int) -> int:
        """The hidden width of a transformer block's MLP (``c_fc`` maps width -> hidden)."""
        hidden, inner = self.shape(f"{block}mlp.c_fc.weight", 2)
        if inner != width:
            raise self.error(
                f"'{block}mlp.c_fc.weight' has shape {[hidden, inner]}, expected [hidden, {width}]"
            )
        return hidden


#: The structural settings a configuration may state and the shapes decide (a disagreement is an
#: error), except the image resolution and context length: open_clip resizes the position
#: embeddings to the configuration's, and so does clipfast.
STRUCTURE = (
    "embed_dim",
    "vision_layers",
    "vision_width",
    "vision_patch_size",
    "vision_mlp_width",
    "vocab_size",
    "transformer_width",
    "transformer_layers",
    "transformer_mlp_width",
)
RESIZABLE = ("image_resolution", "context_length")


def _heads(
    shapes: _Shapes,
    what: str,
    width: int,
    argument: Optional[int],
    decided: Mapping[str, Decided],
    published: Optional[tuple[int, str]],
) -> tuple[int, Provenance]:
    """The head count of one tower and where it came from: argument > configuration (a count or a
    head width) > the published configuration whose shapes match > 64-wide heads."""
    head_width_key = what.replace("_heads", "_head_width")
    if argument is not None:
        heads, where = int(argument), Provenance(ARGUMENT)
    elif what in decided:
        heads, where = int(decided[what][0]), decided[what][1]
    elif head_width_key in decided:
        head_width, where = int(decided[head_width_key][0]), decided[head_width_key][1]
        heads = width // head_width if head_width > 0 else 0
    elif published is not None:
        heads, where = published[0], Provenance(PUBLISHED, published[1])
    else:
        heads, where = width // 64, Provenance(DEFAULT, "64-wide heads")
    if heads <= 0 or width % heads != 0:
        said = f" ({where})" if where.kind != ARGUMENT else ""
        hint = f"; pass {what}=..." if where.kind != ARGUMENT else ""
        raise shapes.error(f"{what}={heads}{said} does not divide the attention width {width}{hint}")
    return heads, where


def _activation(
    name: str, quick_gelu: Optional[bool], decided: Mapping[str, Decided]
) -> tuple[str, Provenance]:
    if quick_gelu is not None:
        return ("quick_gelu" if quick_gelu else "gelu"), Provenance(
            ARGUMENT, f"quick_gelu={bool(quick_gelu)}"
        )
    if name in decided:
        value, where = decided[name]
        if value not in ACTIVATIONS:
            raise ArchitectureError(f"{where.detail or where}: {name} {value!r} is not one of {ACTIVATIONS}")
        return str(value), where
    return "quick_gelu", Provenance(DEFAULT, "clip.load's QuickGELU")


def infer_architecture(
    state_dict: Mapping[str, Any],
    *,
    vision_heads: Optional[int] = None,
    transformer_heads: Optional[int] = None,
    quick_gelu: Optional[bool] = None,
    decided: Optional[Mapping[str, Decided]] = None,
    source: Union[str, os.PathLike[str], None] = None,
) -> Architecture:
    """Read a CLIP model's hyperparameters from the shapes in ``state_dict`` (OpenAI's key names).

    ``vision_heads``, ``transformer_heads`` and ``quick_gelu`` (both towers) are explicit arguments;
    ``decided`` maps settings to ``(value, Provenance)`` as a configuration travelling with the
    weights or a TorchScript archive decides them (``vision_heads`` or ``vision_head_width``,
    ``transformer_heads`` or ``transformer_head_width``, ``vision_activation``,
    ``text_activation``, and structural settings, which must agree with the shapes; a different
    ``image_resolution`` / ``context_length`` is taken, the position embeddings being resized).
    Whatever neither says comes from the published open_clip configuration whose shapes match
    (head widths) or defaults; ``Architecture.sources`` records each decision. ``source`` (the file
    the tensors came from) is named in errors. Raises ``ArchitectureError`` naming the missing or
    inconsistent key, or the configuration that disagrees with the shapes."""
    shapes = _Shapes(state_dict, os.fspath(source) if source is not None else None)
    decided = dict(decided or {})
    if not any(key.startswith("visual.") for key in state_dict):
        if any(key.startswith(("vision_model.", "text_model.")) for key in state_dict):
            raise shapes.error(
                "tensors named as in transformers' CLIP models (vision_model.* / text_model.*), not "
                "OpenAI's layout: load the Hugging Face folder, with the config.json that "
                "from_pretrained reads beside the weights (a lone .safetensors file with both towers "
                "is read as bare transformers weights)"
            )
        raise shapes.error("no visual.* tensors; not a CLIP checkpoint in OpenAI's layout")

    embed_width, embed_dim = shapes.shape("text_projection", 2)
    vision_patch_size: Optional[int]
    vision_layers: Union[int, tuple[int, int, int, int]]
    vision_mlp_width: Optional[int] = None
    if "visual.proj" in state_dict:  # VisionTransformer
        vision_width, in_channels, patch_h, patch_w = shapes.shape("visual.conv1.weight", 4)
        if in_channels != 3 or patch_h != patch_w:
            raise shapes.error(
                f"'visual.conv1.weight' has shape {[vision_width, in_channels, patch_h, patch_w]}, "
                "expected [width, 3, patch, patch]"
            )
        vision_patch_size = patch_w
        vision_layers = shapes.block_count("visual.transformer.resblocks.")
        grid, pos_width = shapes.square_grid("visual.positional_embedding")
        if pos_width != vision_width:
            raise shapes.error(
                f"'visual.positional_embedding' has width {pos_width}, the patch embedding {vision_width}"
            )
        image_resolution = vision_patch_size * grid
        proj = shapes.shape("visual.proj", 2)
        if proj != (vision_width, embed_dim):
            raise shapes.error(
                f"'visual.proj' has shape {list(proj)}, expected {[vision_width, embed_dim]} "
                "(vision width x text_projection's embedding size)"
            )
        vision_mlp_width = shapes.mlp_width("visual.transformer.resblocks.0.", vision_width)
    else:  # ModifiedResNet
        counts = [shapes.block_count(f"visual.layer{i}.") for i in (1, 2, 3, 4)]
        vision_layers = (counts[0], counts[1], counts[2], counts[3])
        vision_width = shapes.shape("visual.layer1.0.conv1.weight", 4)[0]
        vision_patch_size = None
        grid, pool_width = shapes.square_grid("visual.attnpool.positional_embedding")
        if pool_width != vision_width * 32:
            raise shapes.error(
                f"'visual.attnpool.positional_embedding' has width {pool_width}, expected "
                f"{vision_width * 32} (32 x the width {vision_width} of 'visual.layer1.0.conv1.weight')"
            )
        image_resolution = grid * 32
        c_proj = shapes.shape("visual.attnpool.c_proj.weight", 2)
        if c_proj != (embed_dim, vision_width * 32):
            raise shapes.error(
                f"'visual.attnpool.c_proj.weight' has shape {list(c_proj)}, "
                f"expected {[embed_dim, vision_width * 32]}"
            )

    context_length, pos_width = shapes.shape("positional_embedding", 2)
    vocab_size, token_width = shapes.shape("token_embedding.weight", 2)
    (transformer_width,) = shapes.shape("ln_final.weight", 1)
    for key, width in (
        ("positional_embedding", pos_width),
        ("token_embedding.weight", token_width),
        ("text_projection", embed_width),
    ):
        if width != transformer_width:
            raise shapes.error(
                f"{key!r} has width {width}, but 'ln_final.weight' says the text width is {transformer_width}"
            )
    transformer_layers = shapes.block_count("transformer.resblocks.")
    transformer_mlp_width = shapes.mlp_width("transformer.resblocks.0.", transformer_width)

    found: dict[str, Any] = {
        "embed_dim": embed_dim,
        "image_resolution": image_resolution,
        "vision_layers": vision_layers,
        "vision_width": vision_width,
        "vision_patch_size": vision_patch_size,
        "vision_grid": grid,
        "context_length": context_length,
        "vocab_size": vocab_size,
        "transformer_width": transformer_width,
        "transformer_layers": transformer_layers,
        "vision_mlp_width": vision_mlp_width,
        "transformer_mlp_width": transformer_mlp_width,
    }
    sources = {name: Provenance(SHAPES) for name in found}
    for name in STRUCTURE:
        if name in decided:
            value, where = decided[name]
            if _normal(value) != _normal(found[name]):
                raise shapes.error(
                    f"{where.detail or where} says {name} = {_normal(value)}, but the weights have "
                    f"{_normal(found[name])}: the configuration does not describe these weights"
                )
            sources[name] = where
    for name in RESIZABLE:
        if name in decided:
            value, where = decided[name]
            found[name], sources[name] = int(value), where
    if "image_resolution" in decided:
        found["vision_grid"] = _grid(shapes, found["image_resolution"], vision_patch_size, sources)
    if found["context_length"] <= 0:
        raise shapes.error(f"context length {found['context_length']} is not positive")

    from .published import match, match_refused

    published = match(found)
    if published is None and not any(where.kind in (CONFIG, TORCHSCRIPT) for _, where in decided.values()):
        refused = match_refused(found)
        if refused is not None:  # a bare file of a model clipfast would build wrong
            raise shapes.error(
                f"these shapes are open_clip's {refused.name}, which clipfast cannot compute exactly "
                f"({refused.reason}); use open_clip for this model"
            )
    attention_width = vision_width if vision_patch_size is not None else vision_width * 32
    heads_v, sources["vision_heads"] = _heads(
        shapes,
        "vision_heads",
        attention_width,
        vision_heads,
        decided,
        None if published is None else (published.vision_heads, published.name),
    )
    heads_t, sources["transformer_heads"] = _heads(
        shapes,
        "transformer_heads",
        transformer_width,
        transformer_heads,
        decided,
        None if published is None else (published.transformer_heads, published.name),
    )
    vision_activation: Optional[str] = None
    if vision_patch_size is not None:
        vision_activation, sources["vision_activation"] = _activation(
            "vision_activation", quick_gelu, decided
        )
    text_activation, sources["text_activation"] = _activation("text_activation", quick_gelu, decided)
    return Architecture(
        **found,
        vision_heads=heads_v,
        transformer_heads=heads_t,
        vision_activation=vision_activation,
        text_activation=text_activation,
        sources=sources,
    )


def _grid(shapes: _Shapes, size: int, patch_size: Optional[int], sources: Mapping[str, Provenance]) -> int:
    """The patch grid of a configuration's image size, as open_clip's towers compute it: a size
    that is not a multiple of the patch (32 for a ModifiedResNet) is floored, as the strided
    convolutions floor it. Raises for a size with no whole patch, and for the ResNet sizes whose
    feature map is one larger than that grid (size % 32 == 31: the stem's first convolution rounds
    up), where open_clip's model fails at its first image."""
    unit = patch_size if patch_size is not None else 32
    grid = size // unit if size > 0 else 0
    where = f"image size {size} ({sources['image_resolution']})"
    if grid <= 0:
        raise shapes.error(f"{where} is smaller than one {unit}-pixel patch")
    if patch_size is None and size % 32 == 31:
        raise shapes.error(
            f"{where}: the ResNet's feature map is {grid + 1}x{grid + 1}, its attention pool's position "
            f"embedding {grid}x{grid} (size // 32); open_clip's model fails at its first image"
        )
    return grid


def _normal(value: Any) -> Any:
    """Lists (from JSON) and tuples compare equal."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def assumption_warning(arch: Architecture, source: str, unused_config: Optional[str] = None) -> Optional[str]:
    """The one warning ``load`` gives when a setting was assumed (None when nothing was): what was
    assumed and which argument decides it. ``unused_config``: a configuration file beside ``source``
    that was not used (a Hugging Face ``config.json`` beside weights in OpenAI's layout)."""
    assumed = arch.assumed()
    if not assumed:
        return None
    parts = []
    activations = [name for name in ("vision_activation", "text_activation") if name in assumed]
    if activations:
        parts.append(
            "QuickGELU (clip.load's rule; OpenAI, MetaCLIP and DFN models use it, most LAION and "
            "DataComp models use GELU): pass quick_gelu=False for GELU, quick_gelu=True to confirm"
        )
    guessed_heads = [
        (name, getattr(arch, name))
        for name in ("vision_heads", "transformer_heads")
        if name in assumed or (activations and arch.sources.get(name, Provenance(SHAPES)).kind == PUBLISHED)
    ]
    if guessed_heads:

        def why(name: str) -> str:
            where = arch.sources[name]
            return f"as open_clip's {where.detail}" if where.kind == PUBLISHED else where.detail

        described = ", ".join(f"{name}={count} ({why(name)})" for name, count in guessed_heads)
        parts.append(
            f"head counts {described}: pass {' / '.join(n + '=' for n, _ in guessed_heads)} if different"
        )
    # Only weights in OpenAI's layout get here (a Hugging Face config.json states every setting), and
    # beside them clipfast reads open_clip's configuration, never a config.json.
    if unused_config is None:
        reason = "no configuration travels with these weights"
    else:  # a config.json is read only with weights under Hugging Face's names: say why this one was not
        reason = (
            f"these weights are in OpenAI's layout, so the config.json beside them ({unused_config}) was "
            "not used (clipfast reads a config.json only with weights under Hugging Face's tensor names), "
            "and no configuration travels with weights in OpenAI's layout"
        )
    return (
        f"{source}: {reason}, so clipfast assumed "
        + "; and ".join(parts)
        + ". (An open_clip_config.json beside the file, or `clipfast convert`, records them.)"
    )


def warn_assumptions(
    arch: Architecture, source: str, stacklevel: int = 2, unused_config: Optional[str] = None
) -> None:
    """Issue :func:`assumption_warning` (a ``UserWarning``), if any."""
    message = assumption_warning(arch, source, unused_config)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def check_shapes(
    expected: Iterable[tuple[str, tuple[int, ...]]],
    state_dict: Mapping[str, Any],
    source: Union[str, os.PathLike[str], None] = None,
) -> None:
    """Every expected key present with its shape, nothing else (besides the archive-only buffers)."""
    shapes = _Shapes(state_dict, os.fspath(source) if source is not None else None)
    wanted = dict(expected)
    for key, shape in wanted.items():
        value = state_dict.get(key)
        if value is None:
            if key.endswith(".num_batches_tracked"):
                continue  # torch's BatchNorm fills it in when absent, as for clip
            raise shapes.error(f"missing tensor {key!r} (expected shape {list(shape)})")
        found = getattr(value, "shape", None)
        if found is None:
            raise shapes.error(f"{key!r} is not a tensor (found {type(value).__name__})")
        if tuple(found) != shape:
            raise shapes.error(f"{key!r} has shape {list(found)}, the model needs {list(shape)}")
    if len(state_dict) != len(wanted):
        extra = [key for key in state_dict if key not in wanted and key not in ARCHIVE_ONLY_KEYS]
        if extra:
            more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
            raise shapes.error(f"unexpected tensors {extra[:3]}{more} for this architecture")
