"""``clipfast.clip``: the names of openai/CLIP's ``clip.clip`` module, for code that reaches into it.

After ``import clipfast as clip``, ``clip.clip.load``, ``clip.clip._MODELS``,
``clip.clip._transform(n_px)`` and the other names that code written for openai/CLIP uses resolve
to clipfast's versions (same results), as do the transforms it imports from torchvision (``Compose``,
``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize``: clipfast's, with torchvision's attributes).
``BICUBIC`` is Pillow's constant, not torchvision's ``InterpolationMode`` (clipfast does not import
torchvision; ``InterpolationMode`` itself is torchvision's, imported when first read); both mean the
same filter.
"""

from __future__ import annotations

from typing import Any, Optional

from PIL import Image

from .download import download as _download_file
from .load import load
from .registry import MODELS, available_models
from .tokenizer import tokenize
from .transforms import CenterCrop, Compose, Normalize, Resize, ToTensor, for_resolution  # noqa: F401  (clip.clip has them)

__all__ = ["available_models", "load", "tokenize"]

BICUBIC = Image.Resampling.BICUBIC

#: Model name -> download URL, as openai/CLIP's ``_MODELS``.
_MODELS: dict[str, str] = dict(MODELS)


def _download(url: str, root: Optional[str] = None) -> str:
    """openai/CLIP's ``_download(url, root)``: the verified file's path (see ``clipfast.download``)."""
    return _download_file(url, root)


def _convert_image_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _transform(n_px: int) -> Compose:
    """The preprocess that ``load`` returns for input resolution ``n_px``."""
    return for_resolution(n_px)


def __getattr__(name: str) -> Any:
    # openai/CLIP builds `_tokenizer` at import; here it is built on first use.
    if name == "_tokenizer":
        from .simple_tokenizer import SimpleTokenizer

        tokenizer = SimpleTokenizer()
        globals()["_tokenizer"] = tokenizer
        return tokenizer
    if name == "_Tokenizer":  # `from .simple_tokenizer import SimpleTokenizer as _Tokenizer`
        from .simple_tokenizer import SimpleTokenizer

        globals()["_Tokenizer"] = SimpleTokenizer
        return SimpleTokenizer
    if name == "InterpolationMode":  # torchvision's, for code that passes it to Resize
        try:
            from torchvision.transforms import InterpolationMode
        except ImportError as err:
            raise AttributeError(
                f"module {__name__!r} has no attribute 'InterpolationMode' (it is torchvision's, "
                "not installed; clipfast.clip.BICUBIC is the same filter)"
            ) from err
        globals()["InterpolationMode"] = InterpolationMode
        return InterpolationMode
    if name == "build_model":  # `from .model import build_model` in openai/CLIP (imports torch)
        from .model import build_model

        globals()["build_model"] = build_model
        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
