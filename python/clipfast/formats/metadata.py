"""The settings clipfast records in a safetensors file's metadata (``clipfast convert`` writes them),
so that a later load needs no guess: the architecture (head counts, activations, widths), the
preprocessing, and where the weights came from.

The safetensors header's ``__metadata__`` maps strings to strings; clipfast uses one key,
:data:`METADATA_KEY`, whose value is a JSON object::

    {"version": 1,
     "architecture": {<every Architecture setting: embed_dim, ..., vision_heads, transformer_heads,
                      vision_mlp_width, transformer_mlp_width, vision_activation, text_activation>},
     "preprocess": {"mean": [...], "std": [...], "interpolation": "bicubic",
                    "resize_mode": "shortest", "fill_color": 0, "size": 224},     (optional)
     "source": {"path": ..., "sha256": ..., "layout": ...}}                      (optional, free-form)

Torch-free.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Optional

from ..arch import ACTIVATIONS, CONFIG, RESIZABLE, STRUCTURE, Architecture, Decided, Provenance
from ..errors import CheckpointError
from . import PreprocessConfig

__all__ = ["METADATA_KEY", "VERSION", "decode", "encode", "read_safetensors_metadata"]

METADATA_KEY = "clipfast"
VERSION = 1

#: A safetensors header larger than this is not read for metadata (the reader checks the file).
_MAX_HEADER = 100 * 2**20


def encode(
    arch: Architecture,
    preprocess: Optional[PreprocessConfig] = None,
    source: Optional[Mapping[str, Any]] = None,
) -> dict[str, str]:
    """The ``__metadata__`` entries recording ``arch`` (and the preprocessing, and the source)."""
    settings = arch.settings()
    if isinstance(settings["vision_layers"], tuple):
        settings["vision_layers"] = list(settings["vision_layers"])
    value: dict[str, Any] = {"version": VERSION, "architecture": settings}
    if preprocess is not None:
        pre = asdict(preprocess)
        pre.pop("source", None)
        pre["mean"], pre["std"] = list(pre["mean"]), list(pre["std"])
        value["preprocess"] = pre
    if source is not None:
        value["source"] = dict(source)
    return {METADATA_KEY: json.dumps(value, sort_keys=True)}


def decode(
    metadata: Mapping[str, str], path: str
) -> Optional[tuple[dict[str, Decided], Optional[PreprocessConfig]]]:
    """The settings (``(value, Provenance)`` pairs) and preprocessing recorded in ``metadata``;
    None when it holds no clipfast entry. Raises ``CheckpointError`` naming ``path`` for an entry
    that is not what :func:`encode` writes."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return None
    where = Provenance(CONFIG, f"{path} (safetensors metadata)")
    try:
        value = json.loads(raw)
        if not isinstance(value, dict) or value.get("version") != VERSION:
            raise ValueError(f"version {value.get('version') if isinstance(value, dict) else None!r}")
        arch = value["architecture"]
        decided: dict[str, Decided] = {}
        for name in (*STRUCTURE, *RESIZABLE, "vision_heads", "transformer_heads"):
            if arch.get(name) is not None:
                item = arch[name]
                decided[name] = (tuple(item) if isinstance(item, list) else int(item), where)
        for name in ("vision_activation", "text_activation"):
            if arch.get(name) is not None:
                if arch[name] not in ACTIVATIONS:
                    raise ValueError(f"{name} {arch[name]!r}")
                decided[name] = (str(arch[name]), where)
        preprocess = None
        if isinstance(value.get("preprocess"), dict):
            pre = dict(value["preprocess"])
            preprocess = PreprocessConfig(
                mean=tuple(float(v) for v in pre.get("mean", PreprocessConfig.mean)),
                std=tuple(float(v) for v in pre.get("std", PreprocessConfig.std)),
                interpolation=str(pre.get("interpolation", "bicubic")),
                resize_mode=str(pre.get("resize_mode", "shortest")),
                fill_color=int(pre.get("fill_color", 0)),
                size=None if pre.get("size") is None else int(pre["size"]),
                source=where,
            )
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: the {METADATA_KEY!r} metadata entry is not clipfast's: {err}"
        ) from err
    return decided, preprocess


def read_safetensors_metadata(path: str) -> Optional[dict[str, str]]:
    """The ``__metadata__`` of a safetensors file (None where the file is not one, or has none).
    Only the header is read; a damaged file is left to the checkpoint reader to report."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (size,) = struct.unpack("<Q", head)
            if size < 2 or size > _MAX_HEADER:
                return None
            header = f.read(size)
        if not header.startswith(b"{"):
            return None
        parsed = json.loads(header)
    except (OSError, ValueError):
        return None
    meta = parsed.get("__metadata__") if isinstance(parsed, dict) else None
    if not isinstance(meta, dict):
        return None
    return {str(k): str(v) for k, v in meta.items()}
