"""clipfast: load OpenAI CLIP models many times faster, safely.

``import clipfast as clip`` runs code written for openai/CLIP unchanged.

The public names load on first use (PEP 562): ``import clipfast`` imports neither torch nor
Pillow, so the ``clipfast`` command (list, download, verify, inspect) answers at once, and
``clipfast.load`` pulls in torch only when it is called or looked up.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any, Optional

from . import download as download  # torch-free; a callable module: download(url, ...)
from ._native import __version__
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
    UnsupportedDtypeError,
)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from . import clip as clip
    from . import model as model
    from . import simple_tokenizer as simple_tokenizer
    from .arch import Architecture as Architecture
    from .arch import infer_architecture as infer_architecture
    from .convert import convert as convert
    from .embedding import embed as embed
    from .embedding import embed_batches as embed_batches
    from .load import load as load
    from .registry import available_models as available_models
    from .state_dict import load_checkpoint as load_checkpoint
    from .tokenizer import tokenize as tokenize
    from .transforms import preprocess_batch as preprocess_batch

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
    "UnsupportedDtypeError",
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

#: Public name -> (submodule, attribute in it; None for the submodule itself). New public names
#: that need torch, Pillow or numpy go here, not into an import at the top of this file.
_LAZY: dict[str, tuple[str, Optional[str]]] = {
    "Architecture": ("arch", "Architecture"),
    "infer_architecture": ("arch", "infer_architecture"),
    "available_models": ("registry", "available_models"),
    "load": ("load", "load"),
    "convert": ("convert", "convert"),  # the function; the module is sys.modules["clipfast.convert"]
    "embed": ("embedding", "embed"),  # the embedding job
    "embed_batches": ("embedding", "embed_batches"),
    "load_checkpoint": ("state_dict", "load_checkpoint"),
    "tokenize": ("tokenizer", "tokenize"),
    "preprocess_batch": ("transforms", "preprocess_batch"),
    # `clip.model`, `clip.clip` and `clip.simple_tokenizer` exist after `import clip`.
    "model": ("model", None),
    "clip": ("clip", None),
    "simple_tokenizer": ("simple_tokenizer", None),
}


def __getattr__(name: str) -> Any:
    entry = _LAZY.get(name)
    if entry is None:
        # Any submodule, as after the eager imports of earlier versions (`clipfast.transforms.X`).
        if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        entry = (name, None)
    module_name, attribute = entry
    module = importlib.import_module(f"{__name__}.{module_name}")
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Keeps ``clipfast.load`` and ``clipfast.convert`` the functions.

    Importing the submodule ``clipfast.load`` (``from clipfast.load import dtype_plan``, or any
    module that imports it) makes Python set the package's attribute ``load`` to that submodule,
    which would hide the function of the same name; the function is stored instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        entry = _LAZY.get(name)
        if isinstance(value, types.ModuleType) and entry is not None and entry[1] is not None:
            if value.__name__ == f"{__name__}.{entry[0]}":
                value = getattr(value, entry[1])
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
