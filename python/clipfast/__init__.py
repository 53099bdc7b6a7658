"""clipfast: load OpenAI CLIP models many times faster, safely.

``import clipfast as clip`` runs code written for openai/CLIP unchanged.
"""

from __future__ import annotations

from . import download  # a callable module: download(url, ...) and download.resolve_model(name)
from . import model as model  # `clipfast.model`, as `clip.model` is after `import clip`
from ._native import __version__
from .arch import Architecture, infer_architecture
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
    "Architecture",
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
    "infer_architecture",
    "load",
    "preprocess_batch",
    "tokenize",
]
