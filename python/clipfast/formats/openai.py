"""OpenAI's layout: one checkpoint file whose tensors carry OpenAI's key names.

OpenAI's own TorchScript archives (the nine official files), ``torch.save``d state dicts (also under
``"state_dict"`` / ``"model"``, with DataParallel's ``module.`` prefix), safetensors files (with
clipfast's metadata where ``clipfast convert`` wrote them). open_clip's CLIP models keep the same
names, so their bare state dicts are read here too. Asked last: it takes any file.

What travels with the weights: a TorchScript archive is OpenAI's (QuickGELU, 64-wide heads); a
safetensors file may carry clipfast's metadata; anything else says nothing, and
``arch.infer_architecture`` falls back to the published configurations and defaults.
"""

from __future__ import annotations

import os
import zipfile
from typing import Optional

from ..arch import TORCHSCRIPT, Decided, Provenance
from . import ModelSource
from .metadata import decode, read_safetensors_metadata

__all__ = ["is_torchscript", "locate", "torchscript_settings"]


def is_torchscript(path: str) -> bool:
    """TorchScript archives are zip files with compiled code and constants beside the pickled module
    (only the zip's central directory is read)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def torchscript_settings() -> dict[str, Decided]:
    """What an OpenAI TorchScript archive decides: QuickGELU in both towers, 64-wide heads."""
    where = Provenance(TORCHSCRIPT, "OpenAI's archives: QuickGELU, 64-wide heads")
    return {
        "vision_head_width": (64, where),
        "transformer_head_width": (64, where),
        "vision_activation": ("quick_gelu", where),
        "text_activation": ("quick_gelu", where),
    }


def locate(path: str) -> Optional[ModelSource]:
    """Any single file (whether it holds a CLIP model is for the reader and the build to say)."""
    if not os.path.isfile(path):
        return None
    if is_torchscript(path):
        return ModelSource("openai", path, torchscript_settings())
    metadata = read_safetensors_metadata(path)
    recorded = decode(metadata, path) if metadata is not None else None
    if recorded is not None:
        decided, preprocess = recorded
        return ModelSource("openai", path, decided, preprocess)
    return ModelSource("openai", path)
