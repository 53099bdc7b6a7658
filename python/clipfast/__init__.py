"""clipfast: load OpenAI CLIP models many times faster, safely.

``import clipfast as clip`` runs code written for openai/CLIP unchanged.
"""

from __future__ import annotations

from ._native import __version__
from . import download  # a callable module: download(url, ...) and download.resolve_model(name)
from .errors import (
    ArchitectureError,
    CheckpointError,
    ChecksumError,
    DownloadError,
    ImageError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from .load import load
from .registry import available_models
from .tokenizer import tokenize
from .transforms import preprocess_batch

__all__ = [
    "ArchitectureError",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "ImageError",
    "ModelNotFoundError",
    "UnsafeCheckpointError",
    "__version__",
    "available_models",
    "download",
    "load",
    "preprocess_batch",
    "tokenize",
]
