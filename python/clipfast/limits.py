"""Memory bounds: what a checkpoint declares may not make clipfast allocate far more than the file.

A checkpoint declares shapes, and the model built from them allocates what they say: a 1 KB file
can declare a 10 GB tensor (a view with stride 0), a context length whose attention mask needs
160 GB, or a configuration of any size. ``load`` checks, before allocating anything for the
model, that what it is about to allocate is at most ``MEMORY_FACTOR`` times the size of the
weights file(s) plus ``MEMORY_ALLOWANCE``, and raises ``CheckpointError`` naming the file
otherwise. Real checkpoints need at most 4 times their size (fp16 weights as float64); float32
weights from fp16 files need 2.

Torch-free at import (the CLI imports it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import CheckpointError

__all__ = ["MEMORY_ALLOWANCE", "MEMORY_FACTOR", "budget", "check", "weights_size"]

#: Bytes that may be allocated per byte of the weights file(s) ...
MEMORY_FACTOR = 8
#: ... plus this fixed allowance (buffers, masks and tables of a small model).
MEMORY_ALLOWANCE = 64 << 20


def weights_size(path: str) -> int:
    """The bytes of the weights behind ``path``: the file, or for a folder or a sharded index
    (``*.index.json``) every file in that folder."""
    folder = None
    if os.path.isdir(path):
        folder = path
    elif path.endswith(".index.json"):
        folder = os.path.dirname(path) or "."
    if folder is None:
        return os.path.getsize(path)
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file():
                total += entry.stat().st_size
    return total


def budget(file_size: int) -> int:
    """The most bytes a load may allocate for weights of ``file_size`` bytes."""
    return MEMORY_FACTOR * file_size + MEMORY_ALLOWANCE


def check(path: str, needed: int, what: str) -> None:
    """Raise ``CheckpointError`` when ``needed`` bytes (for ``what``) exceed the budget of the
    weights at ``path``."""
    size = weights_size(path)
    if needed > budget(size):
        raise CheckpointError(
            f"{path}: {what} would need {needed:,} bytes, more than {MEMORY_FACTOR} x the "
            f"{size:,} bytes of the weights + {MEMORY_ALLOWANCE >> 20} MiB: the shapes it declares "
            "do not match its data (a damaged or crafted file); nothing was allocated"
        )


def numel(shape: Iterable[int]) -> int:
    return math.prod(int(n) for n in shape)


def declared_bytes(shapes: Mapping[str, Any], itemsize: int = 4) -> int:
    """What tensors of these shapes (objects with ``.shape``) take at ``itemsize`` bytes each."""
    return sum(numel(t.shape) for t in shapes.values()) * itemsize
