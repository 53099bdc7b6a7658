"""OpenAI's layout: one checkpoint file whose tensors carry OpenAI's key names.

OpenAI's own TorchScript archives (the nine official files), ``torch.save``d state dicts (also under
``"state_dict"`` / ``"model"``, with DataParallel's ``module.`` prefix), safetensors files (with
clipfast's metadata where ``clipfast convert`` wrote them). open_clip's CLIP models keep the same
names, so their bare state dicts are read here too. Asked last: it takes any file.

What travels with the weights: a TorchScript archive is OpenAI's (QuickGELU, 64-wide heads); a
safetensors file may carry clipfast's metadata; anything else says nothing, and
``arch.infer_architecture`` falls back to the published configurations and defaults. A Hugging Face
``config.json`` beside the file describes transformers' tensor names, not these: it is not used, and
the source names it (``ModelSource.unused_config``) so that the warning about assumed settings says so.
"""

from __future__ import annotations

import os
import struct
from typing import Optional

from ..arch import TORCHSCRIPT, Decided, Provenance
from . import ModelSource
from .metadata import decode, read_safetensors_metadata

__all__ = ["is_torchscript", "locate", "torchscript_settings"]

#: Hugging Face's configuration file (formats.huggingface reads it for weights under its names).
_HF_CONFIG = "config.json"


def is_torchscript(path: str) -> bool:
    """TorchScript archives are zip files with compiled code and constants beside the pickled module.

    Only the zip's central directory is read, in one piece, and searched for those names (Python's
    zipfile would build an object per entry: 10 ms for an OpenAI archive, 5% of a load)."""
    directory = _central_directory(path)
    return directory is not None and (b"/constants.pkl" in directory or b"/code/__torch__" in directory)


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: signature ... size, offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _central_directory(path: str) -> Optional[bytes]:
    """The central directory of a zip file (ZIP64 too), or None where ``path`` is not one."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            tail_size = min(size, _EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size)
            f.seek(size - tail_size)
            tail = f.read(tail_size)
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or at + _EOCD.size > len(tail):
                return None
            _, _, _, _, _, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
            if cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:  # ZIP64: sizes in the ZIP64 record
                locator = at - _ZIP64_LOCATOR.size
                if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
                    return None
                _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator)
                f.seek(record_offset)
                record = f.read(_ZIP64_EOCD.size)
                if len(record) != _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
                    return None
                fields = _ZIP64_EOCD.unpack(record)
                cd_size, cd_offset = fields[-2], fields[-1]
            if cd_offset + cd_size > size or cd_size > 256 * 2**20:
                return None
            f.seek(cd_offset)
            return f.read(cd_size)
    except (OSError, struct.error, OverflowError, ValueError):
        return None


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
    beside = os.path.join(os.path.dirname(path), _HF_CONFIG)  # as the file is named: relative stays so
    unused = beside if os.path.isfile(beside) else None
    if is_torchscript(path):
        return ModelSource("openai", path, torchscript_settings(), unused_config=unused)
    metadata = read_safetensors_metadata(path)
    recorded = decode(metadata, path) if metadata is not None else None
    if recorded is not None:
        decided, preprocess = recorded
        return ModelSource("openai", path, decided, preprocess, unused_config=unused)
    return ModelSource("openai", path, unused_config=unused)
