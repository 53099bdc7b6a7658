"""Placeholder: TorchScript loading with graph patching (issue 6)."""

from __future__ import annotations

from typing import Any

__all__ = ["load_jit"]


def load_jit(path: str, device: Any) -> Any:
    raise NotImplementedError("jit=True is not built yet")
