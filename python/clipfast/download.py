"""Placeholder: verified, resumable downloads (issue 4)."""

from __future__ import annotations

__all__ = ["download", "resolve_model"]


def download(url: str, root: str | None = None, sha256: str | bool | None = None, progress: bool = True) -> str:
    raise NotImplementedError("clipfast.download is not built yet")


def resolve_model(name: str, root: str | None = None, *, verify: bool = False) -> str:
    """The local path of an official model's verified file, downloading it when needed."""
    raise NotImplementedError("named-model downloads are not built yet")
