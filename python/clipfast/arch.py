"""The hyperparameters of a CLIP model, read from the shapes of its state dict.

openai/CLIP's ``build_model`` reads them the same way; this version checks every key it uses and says
which key or shape is wrong instead of failing with a ``KeyError`` or an assertion deep inside torch.
Head counts cannot be seen in any shape: they default to openai/CLIP's rule (width // 64; a ResNet's
attention pool has width * 32 // 64) and can be overridden.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union

from .errors import ArchitectureError

__all__ = ["WRAPPER_PREFIX", "Architecture", "infer_architecture", "without_wrapper_prefix"]

# The buffers OpenAI's TorchScript archives carry beside the weights; they are not model state.
ARCHIVE_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")

#: The prefix (Distributed)DataParallel gives every key of the model it wraps; training checkpoints
#: (open_clip's among them) are often saved from the wrapper.
WRAPPER_PREFIX = "module."

_T = TypeVar("_T")


def without_wrapper_prefix(tensors: Mapping[str, _T]) -> OrderedDict[str, _T]:
    """``tensors`` with :data:`WRAPPER_PREFIX` taken off the keys when every key has it (a mapping
    where only some keys have it is left as it is, and is not a CLIP state dict)."""
    if tensors and all(key.startswith(WRAPPER_PREFIX) for key in tensors):
        return OrderedDict((key[len(WRAPPER_PREFIX) :], value) for key, value in tensors.items())
    return tensors if isinstance(tensors, OrderedDict) else OrderedDict(tensors)


@dataclass(frozen=True)
class Architecture:
    """What a CLIP checkpoint's tensors say about the model (the arguments of ``clip.model.CLIP``,
    plus the vision head count, the patch grid and the kind of image tower)."""

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
        grid = math.isqrt(max(rows - 1, 0))
        if grid == 0 or grid * grid + 1 != rows:
            raise self.error(f"{key!r} has {rows} rows, which is not grid**2 + 1 for a square grid")
        return grid, width


def _heads(shapes: _Shapes, what: str, width: int, override: Optional[int], default: int) -> int:
    heads = default if override is None else int(override)
    if heads <= 0 or width % heads != 0:
        hint = "" if override is not None else f" (the default rule gives {default}; pass {what}=...)"
        raise shapes.error(f"{what}={heads} does not divide the attention width {width}{hint}")
    return heads


def infer_architecture(
    state_dict: Mapping[str, Any],
    *,
    vision_heads: Optional[int] = None,
    transformer_heads: Optional[int] = None,
    source: Union[str, os.PathLike[str], None] = None,
) -> Architecture:
    """Read a CLIP model's hyperparameters from the shapes in ``state_dict`` (OpenAI's key names).

    ``vision_heads`` and ``transformer_heads`` override openai/CLIP's head-count rule; ``source`` (the
    file the tensors came from) is named in errors. Raises ``ArchitectureError`` naming the missing or
    inconsistent key."""
    shapes = _Shapes(state_dict, os.fspath(source) if source is not None else None)
    if not any(key.startswith("visual.") for key in state_dict):
        raise shapes.error("no visual.* tensors; not a CLIP checkpoint in OpenAI's layout")

    embed_width, embed_dim = shapes.shape("text_projection", 2)
    vision_patch_size: Optional[int]
    vision_layers: Union[int, tuple[int, int, int, int]]
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
        default_vision_heads = vision_width // 64
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
        default_vision_heads = vision_width * 32 // 64

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

    attention_width = vision_width if vision_patch_size is not None else vision_width * 32
    return Architecture(
        embed_dim=embed_dim,
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        vision_grid=grid,
        vision_heads=_heads(shapes, "vision_heads", attention_width, vision_heads, default_vision_heads),
        context_length=context_length,
        vocab_size=vocab_size,
        transformer_width=transformer_width,
        transformer_heads=_heads(
            shapes, "transformer_heads", transformer_width, transformer_heads, transformer_width // 64
        ),
        transformer_layers=transformer_layers,
    )


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
