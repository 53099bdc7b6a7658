"""The settings clipfast records in a safetensors file's metadata (``clipfast convert`` writes them),
so that a later load needs no guess: the architecture (head counts, activations, widths), the
preprocessing, and where the weights came from.

The safetensors header's ``__metadata__`` maps strings to strings (keys agreed in NOTES.md)::

    format                  "pt"
    clipfast.schema         "1"
    clipfast.vision_act     "quick_gelu" | "gelu"      (absent for a ModifiedResNet image tower)
    clipfast.text_act       "quick_gelu" | "gelu"
    clipfast.vision_heads   "16"
    clipfast.text_heads     "16"
    clipfast.architecture   JSON of the Architecture's settings (``Architecture.settings()``)
    clipfast.preprocess     JSON {"size", "mean", "std", "interpolation", "resize_mode", "fill_color"}
    clipfast.source         the name or path converted        (free-form, shown by inspect)
    clipfast.source_sha256  its SHA-256
    clipfast.source_format  "openai" | "open_clip" | "huggingface" | ...

Torch-free.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import replace
from typing import Optional

from ..arch import ACTIVATIONS, CONFIG, RESIZABLE, STRUCTURE, Architecture, Decided, Provenance
from ..errors import CheckpointError
from . import PreprocessConfig, rgb_normalization

__all__ = ["SCHEMA", "decode", "encode", "read_safetensors_metadata"]

SCHEMA = "1"
_PREFIX = "clipfast."

#: A safetensors header larger than this is not read for metadata (the reader checks the file).
_MAX_HEADER = 100 * 2**20


def encode(
    arch: Architecture,
    preprocess: Optional[PreprocessConfig] = None,
    *,
    source: Optional[str] = None,
    source_sha256: Optional[str] = None,
    source_format: Optional[str] = None,
) -> dict[str, str]:
    """The ``__metadata__`` entries recording ``arch`` (and the preprocessing and the source)."""
    settings = arch.settings()
    if isinstance(settings["vision_layers"], tuple):
        settings["vision_layers"] = list(settings["vision_layers"])
    out = {
        "format": "pt",
        _PREFIX + "schema": SCHEMA,
        _PREFIX + "text_act": arch.text_activation,
        _PREFIX + "vision_heads": str(arch.vision_heads),
        _PREFIX + "text_heads": str(arch.transformer_heads),
        _PREFIX + "architecture": json.dumps(settings, sort_keys=True),
    }
    if arch.vision_activation is not None:
        out[_PREFIX + "vision_act"] = arch.vision_activation
    if preprocess is not None:
        size = preprocess.size if preprocess.size is not None else arch.image_resolution
        out[_PREFIX + "preprocess"] = json.dumps(
            {
                "size": size,
                "mean": list(preprocess.mean),
                "std": list(preprocess.std),
                "interpolation": preprocess.interpolation,
                "resize_mode": preprocess.resize_mode,
                "fill_color": preprocess.fill_color,
            },
            sort_keys=True,
        )
    for key, value in (
        ("source", source),
        ("source_sha256", source_sha256),
        ("source_format", source_format),
    ):
        if value is not None:
            out[_PREFIX + key] = str(value)
    return out


def decode(
    metadata: Mapping[str, str], path: str
) -> Optional[tuple[dict[str, Decided], Optional[PreprocessConfig]]]:
    """The settings (``(value, Provenance)`` pairs) and preprocessing recorded in ``metadata``;
    None when it holds no clipfast entry. Raises ``CheckpointError`` naming ``path`` for entries
    that are not what :func:`encode` writes (another schema, a bad value)."""
    if _PREFIX + "schema" not in metadata:
        return None
    where = Provenance(CONFIG, f"the safetensors metadata of {path}")
    try:
        if metadata[_PREFIX + "schema"] != SCHEMA:
            raise ValueError(f"schema {metadata[_PREFIX + 'schema']!r} (this clipfast reads {SCHEMA!r})")
        decided: dict[str, Decided] = {}
        raw_arch = metadata.get(_PREFIX + "architecture")
        arch = json.loads(raw_arch) if raw_arch is not None else {}
        if not isinstance(arch, dict):
            raise ValueError("clipfast.architecture is not a JSON object")
        for name in (*STRUCTURE, *RESIZABLE):
            if arch.get(name) is not None:
                item = arch[name]
                if isinstance(item, list) and name != "vision_layers":  # a ResNet's layer counts
                    raise ValueError(f"clipfast.architecture's {name} is a list, not a number")
                decided[name] = (tuple(int(v) for v in item) if isinstance(item, list) else int(item), where)
        for name, key in (("vision_heads", "vision_heads"), ("transformer_heads", "text_heads")):
            if _PREFIX + key in metadata:
                decided[name] = (int(metadata[_PREFIX + key]), where)
        for name, key in (("vision_activation", "vision_act"), ("text_activation", "text_act")):
            value = metadata.get(_PREFIX + key)
            if value is not None:
                if value not in ACTIVATIONS:
                    raise ValueError(f"clipfast.{key} {value!r} is not one of {ACTIVATIONS}")
                decided[name] = (value, where)
        preprocess = None
        raw_pre = metadata.get(_PREFIX + "preprocess")
        if raw_pre is not None:
            pre = json.loads(raw_pre)
            if not isinstance(pre, dict):
                raise ValueError("clipfast.preprocess is not a JSON object")
            defaults = PreprocessConfig()
            preprocess = PreprocessConfig(
                mean=tuple(float(v) for v in pre.get("mean", defaults.mean)),
                std=tuple(float(v) for v in pre.get("std", defaults.std)),
                interpolation=str(pre.get("interpolation", "bicubic")),
                resize_mode=str(pre.get("resize_mode", "shortest")),
                fill_color=int(pre.get("fill_color", 0)),
                size=None if pre.get("size") is None else int(pre["size"]),
                source=where,
            )
            mean, std = rgb_normalization(preprocess.mean, preprocess.std)
            preprocess = replace(preprocess, mean=mean, std=std)
            if preprocess.interpolation not in ("bicubic", "bilinear"):
                raise ValueError(f"interpolation {preprocess.interpolation!r}")
            if preprocess.resize_mode not in ("shortest", "longest", "squash"):
                raise ValueError(f"resize_mode {preprocess.resize_mode!r}")
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError) as err:
        raise CheckpointError(f"{path}: clipfast's safetensors metadata is not readable: {err}") from err
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
    except (OSError, ValueError, RecursionError):
        return None
    meta = parsed.get("__metadata__") if isinstance(parsed, dict) else None
    if not isinstance(meta, dict):
        return None
    return {str(k): str(v) for k, v in meta.items()}
