"""Placeholder: clip-compatible tokenize (issue 6)."""

from __future__ import annotations

from typing import Any

__all__ = ["tokenize"]


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> Any:
    raise NotImplementedError("clipfast.tokenize is not built yet")
