"""clip's preprocessing: Resize(n_px, bicubic) on the shorter side, CenterCrop(n_px), RGB, ToTensor,
Normalize with CLIP's mean and std. Same results as openai/CLIP's ``_transform(n_px)``, without
importing torchvision.

This first version runs on Pillow; the Rust fast path replaces its internals (issue 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "MEAN",
    "STD",
    "CenterCrop",
    "Compose",
    "ConvertToRGB",
    "Normalize",
    "Resize",
    "ToTensor",
    "for_resolution",
    "preprocess_batch",
]

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(width: int, height: int, n_px: int) -> tuple[int, int]:
    """torchvision's Resize(int): the short side becomes n_px, the long side is truncated."""
    if width <= height:
        return n_px, int(n_px * height / width)
    return int(n_px * width / height), n_px


class Resize:
    """Resize the shorter side to ``size`` with Pillow's bicubic filter (no-op when it already matches)."""

    def __init__(self, size: int, interpolation: Any = Image.Resampling.BICUBIC) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        new = resized_size(w, h, self.size)
        if new == (w, h):
            return img
        return img.resize(new, self.interpolation)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, interpolation=bicubic)"


class CenterCrop:
    """Crop the centre ``size`` x ``size`` square, offsets rounded as torchvision rounds them."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        n = self.size
        if w < n or h < n:  # torchvision pads with zeros first; after Resize this cannot happen
            padded = Image.new(img.mode, (max(w, n), max(h, n)))
            padded.paste(img, ((max(w, n) - w) // 2, (max(h, n) - h) // 2))
            img, (w, h) = padded, padded.size
        top = round((h - n) / 2.0)
        left = round((w - n) / 2.0)
        return img.crop((left, top, left + n, top + n))

    def __repr__(self) -> str:
        return f"CenterCrop(size=({self.size}, {self.size}))"


class ConvertToRGB:
    """``image.convert("RGB")``, applied after the resize as openai/CLIP does."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.convert("RGB")

    def __repr__(self) -> str:
        return "ConvertToRGB()"


class ToTensor:
    """HWC uint8 -> CHW float32 in [0, 1] (true division by 255)."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        return t.to(torch.float32).div(255)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """(x - mean) / std per channel, in float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
        return t.sub(mean).div(std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Compose:
    """Apply ``transforms`` in order; like torchvision's Compose, the list is public and editable."""

    def __init__(self, transforms: list[Any]) -> None:
        self.transforms = transforms

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"Compose({inner}\n)"


def for_resolution(n_px: int) -> Compose:
    """The preprocess object ``clipfast.load`` returns for a model of input resolution ``n_px``."""
    return Compose([Resize(n_px), CenterCrop(n_px), ConvertToRGB(), ToTensor(), Normalize(MEAN, STD)])


def preprocess_batch(items: Any, n_px: int = 224, **kwargs: Any) -> Any:
    raise NotImplementedError("clipfast.preprocess_batch is not built yet")
