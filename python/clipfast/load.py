"""Placeholder: clipfast.load (issue 3)."""

from __future__ import annotations

from typing import Any

__all__ = ["load"]


def load(name: str, device: Any = None, jit: bool = False, download_root: str | None = None) -> Any:
    raise NotImplementedError("clipfast.load is not built yet")
