"""Placeholder: preprocessing (issue 5)."""

from __future__ import annotations

from typing import Any

__all__ = ["preprocess_batch"]


def preprocess_batch(items: Any, n_px: int = 224, **kwargs: Any) -> Any:
    raise NotImplementedError("clipfast.preprocess_batch is not built yet")
