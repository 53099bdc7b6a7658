"""clipfast: load OpenAI CLIP models many times faster, safely.

``import clipfast as clip`` runs code written for openai/CLIP unchanged.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import download  # a callable module: download(url, ...) and download.resolve_model(name)
from . import model as model  # `clipfast.model`, as `clip.model` is after `import clip`
from ._native import __version__
from .arch import Architecture, infer_architecture
from .convert import convert  # torch-free: `clipfast convert` (the function; the module is clipfast.convert)
from .errors import (
    ArchitectureError,
    CheckpointError,
    ChecksumError,
    DownloadError,
    ImageError,
    InputError,
    MissingDependencyError,
    ModelNotFoundError,
    OutputFolderError,
    UnsafeCheckpointError,
)
from .load import load
from .registry import available_models
from .state_dict import load_checkpoint
from .tokenizer import tokenize
from .transforms import preprocess_batch

if TYPE_CHECKING:  # loaded on first use (see __getattr__)
    from .embedding import embed, embed_batches

__all__ = [
    "Architecture",
    "ArchitectureError",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "ImageError",
    "InputError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "OutputFolderError",
    "UnsafeCheckpointError",
    "__version__",
    "available_models",
    "convert",
    "download",
    "embed",
    "embed_batches",
    "infer_architecture",
    "load",
    "load_checkpoint",
    "preprocess_batch",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    # `clip.clip` and `clip.simple_tokenizer` exist after `import clip`; here they load on first use,
    # so `import clipfast` stays fast.
    if name in ("clip", "simple_tokenizer"):
        return importlib.import_module(f"{__name__}.{name}")
    # `clipfast.embed(...)` and `clipfast.embed_batches(...)`: the embedding job, loaded on first use.
    if name in ("embed", "embed_batches"):
        return getattr(importlib.import_module(f"{__name__}.embedding"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
