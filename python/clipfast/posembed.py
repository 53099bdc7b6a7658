"""Position embeddings resized to a model's image grid or context length, as open_clip resizes them
when it loads a checkpoint into a model of another image size or context length.

- Image (``visual.positional_embedding``): the class token's row is kept; the square grid of the
  others is resampled bicubically (``antialias=True``, ``align_corners=False``) to the model's grid.
- Text (``positional_embedding``, or CustomTextCLIP's ``text.positional_embedding``): the rows are
  resampled linearly (``antialias=False``, ``align_corners=False``) to the model's context length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .errors import ArchitectureError

__all__ = [
    "fit_position_embeddings",
    "image_grid",
    "resize_image_positions",
    "resize_text_positions",
]


def resize_image_positions(
    positions: torch.Tensor, grid: tuple[int, int], *, source: str = ""
) -> torch.Tensor:
    """``positions`` (1 + g*g rows: the class token, then a square g x g grid) resampled to ``grid``."""
    rows, width = positions.shape
    old = math.isqrt(max(rows - 1, 0))
    if old * old + 1 != rows:
        where = f"{source}: " if source else ""
        raise ArchitectureError(
            f"{where}'visual.positional_embedding' has {rows} rows, not a class token and a square grid; "
            f"cannot resize it to the model's {grid[0]}x{grid[1]} grid"
        )
    token, image = positions[:1], positions[1:]
    image = image.reshape(1, old, old, width).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=grid, mode="bicubic", antialias=True, align_corners=False)
    image = image.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)
    return torch.cat([token, image], dim=0)


def resize_text_positions(positions: torch.Tensor, length: int) -> torch.Tensor:
    """``positions`` (n rows) resampled linearly to ``length`` rows."""
    rows, width = positions.shape
    resized = F.interpolate(
        positions.reshape(1, rows, width).permute(0, 2, 1),
        size=length,
        mode="linear",
        antialias=False,
        align_corners=False,
    )
    return resized.permute(0, 2, 1)[0]


def image_grid(visual: Any) -> Optional[tuple[int, int]]:
    """The patch grid of an image tower with a resizable position embedding: open_clip's
    ``VisionTransformer.grid_size``, or for clip's and clipfast's the input resolution over the patch
    size; None for towers without one (ModifiedResNet, timm)."""
    grid = getattr(visual, "grid_size", None)
    if grid is not None:
        return (int(grid), int(grid)) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    conv = getattr(visual, "conv1", None)
    resolution = getattr(visual, "input_resolution", None)
    positions = getattr(visual, "positional_embedding", None)
    if isinstance(conv, torch.nn.Conv2d) and isinstance(resolution, int) and positions is not None:
        patch = conv.kernel_size[0]
        return resolution // patch, resolution // patch
    return None


def fit_position_embeddings(
    tensors: MutableMapping[str, torch.Tensor],
    model: Any,
    stored_dtype: Optional[Callable[[str], torch.dtype]] = None,
    *,
    source: str = "",
) -> None:
    """Resize, in place, the image and text position embeddings of ``tensors`` (OpenAI's key names)
    whose length is not ``model``'s. ``stored_dtype(key)``: the dtype the file stores (the resize
    runs in it, as open_clip's, and the result is cast back)."""
    visual = getattr(model, "visual", None)
    positions = tensors.get("visual.positional_embedding")
    grid = image_grid(visual) if visual is not None else None
    if positions is not None and grid is not None and positions.shape[0] != grid[0] * grid[1] + 1:
        tensors["visual.positional_embedding"] = _in_dtype(
            positions,
            stored_dtype("visual.positional_embedding") if stored_dtype else None,
            lambda t: resize_image_positions(t, grid, source=source),
        )
    text = tensors.get("positional_embedding")
    wanted = getattr(model, "positional_embedding", None)
    if text is not None and wanted is not None and text.shape[0] != wanted.shape[0]:
        if text.ndim != 2 or text.shape[1] != wanted.shape[1]:
            return  # a width mismatch: the shape check names it
        length = int(wanted.shape[0])
        tensors["positional_embedding"] = _in_dtype(
            text,
            stored_dtype("positional_embedding") if stored_dtype else None,
            lambda t: resize_text_positions(t, length),
        )


def _in_dtype(
    tensor: torch.Tensor, dtype: Optional[torch.dtype], resize: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    if dtype is not None and dtype != tensor.dtype and dtype.is_floating_point:
        try:
            return resize(tensor.to(dtype)).to(tensor.dtype)
        except (NotImplementedError, RuntimeError):
            pass  # torch has no such kernel for this dtype here (bicubic fp16 on the CPU): resize in fp32
    if tensor.dtype in (torch.float16, torch.bfloat16) and tensor.device.type == "cpu":
        try:
            return resize(tensor)
        except (NotImplementedError, RuntimeError):
            return resize(tensor.float()).to(tensor.dtype)
    return resize(tensor)
