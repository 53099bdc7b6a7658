"""Placeholder: verified, resumable downloads (issue 4)."""

from __future__ import annotations

__all__ = ["download"]


def download(url: str, root: str | None = None, sha256: str | bool | None = None, progress: bool = True) -> str:
    raise NotImplementedError("clipfast.download is not built yet")
