"""Verified, resumable, atomic downloads of checkpoints, and the named-model cache.

``clipfast.download(url, ...)`` (this module is callable) and ``clipfast.download.resolve_model(name)``.
The bytes move in Rust (``clipfast._native.fetch``): Range resume guarded by the server's validator,
retries with backoff, connect/read timeouts, SHA-256 while streaming, ``<file>.part`` renamed to the
final name only once the hash matches, and a cross-process lock per file.

Environment:
    CLIPFAST_MIRROR           ``scheme://host[:port][/prefix]`` replacing the official host (path kept)
    CLIPFAST_OFFLINE=1        never touch the network; a missing file is an error
    CLIPFAST_CONNECT_TIMEOUT  seconds (default 30)
    CLIPFAST_READ_TIMEOUT     seconds of silence before a try fails (default 60)
    CLIPFAST_RETRIES          tries after the first (default 5)
    CLIPFAST_BACKOFF          first wait between tries, in seconds, doubling (default 1)
    CLIPFAST_MIN_RATE         bytes/s below which a transfer, over a whole read timeout, counts as
                              stalled and is retried (slow-loris; default 1024, 0 disables)
"""

from __future__ import annotations

import math
import os
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, Optional, Union
from urllib.parse import unquote, urlsplit

from . import _native, cache
from .errors import ChecksumError, DownloadError, ModelNotFoundError
from .registry import MODELS, available_models, sha256_of_url

__all__ = [
    "OFFICIAL_HOST",
    "ProgressCallback",
    "default_root",
    "download",
    "is_offline",
    "mirror_url",
    "resolve_model",
]

#: ``progress(done_bytes, total_bytes_or_None)``, called about every 100 ms while a download runs.
ProgressCallback = Callable[[int, Optional[int]], None]
Progress = Union[bool, ProgressCallback, None]

OFFICIAL_HOST = "openaipublic.azureedge.net"
_TRUE = {"1", "true", "yes", "on"}


def default_root() -> str:
    """openai/CLIP's cache folder, so an existing clip cache is reused as is."""
    return os.path.expanduser("~/.cache/clip")


def is_offline() -> bool:
    """True when ``CLIPFAST_OFFLINE`` asks never to touch the network."""
    return os.environ.get("CLIPFAST_OFFLINE", "").strip().lower() in _TRUE


def mirror_url(url: str) -> str:
    """``url`` with its scheme and host replaced by ``CLIPFAST_MIRROR`` when it points to the official
    host; the path (``/clip/models/<sha256>/<file>.pt``) is kept after the mirror's own prefix."""
    mirror = os.environ.get("CLIPFAST_MIRROR", "").strip()
    if not mirror:
        return url
    parts = urlsplit(url)
    if (parts.hostname or "").lower() != OFFICIAL_HOST:
        return url
    base = urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ValueError(f"CLIPFAST_MIRROR must look like scheme://host[:port][/prefix], got {mirror!r}")
    path = base.path.rstrip("/") + parts.path
    query = f"?{parts.query}" if parts.query else ""
    return f"{base.scheme}://{base.netloc}{path}{query}"


#: The largest values the Rust engine takes: ``retries`` is a u32, ``min_rate`` a u64, and seconds
#: must fit a ``Duration`` (a larger number would fail there, as an OverflowError or a ValueError
#: naming the engine's argument instead of the variable).
_MAX_RETRIES = 2**32 - 1
_MAX_RATE = 2**64 - 1
_MAX_SECONDS = 1e15


def _env_number(name: str, default: float, kind: type = float, maximum: float = _MAX_SECONDS) -> Any:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {text!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {text!r}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {text!r}")
    return value


def _fetch_options() -> dict[str, Any]:
    return {
        "connect_timeout": _env_number("CLIPFAST_CONNECT_TIMEOUT", 30.0),
        "read_timeout": _env_number("CLIPFAST_READ_TIMEOUT", 60.0),
        "retries": _env_number("CLIPFAST_RETRIES", 5, int, _MAX_RETRIES),
        "backoff": _env_number("CLIPFAST_BACKOFF", 1.0),
        "min_rate": _env_number("CLIPFAST_MIN_RATE", 1024, int, _MAX_RATE),
    }


class _TqdmProgress:
    """A tqdm bar fed by the Rust callback (created on the first call, when the total is known)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: Any = None

    def __call__(self, done: int, total: Optional[int]) -> None:
        if self.bar is None and total is None and done == 0:
            return  # nothing known yet (connecting, or waiting to retry): no empty bar
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit="iB", unit_scale=True, unit_divisor=1024, desc=self.name, leave=True
            )
        if total is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _file_name(url: str) -> str:
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"cannot take a file name from the URL {url!r}")
    return name


def _expected_hash(url: str, sha256: Union[str, bool, None]) -> Optional[str]:
    if sha256 is False:
        return None
    if sha256 is None or sha256 is True:
        found = sha256_of_url(url)
        if found is None:
            raise ValueError(
                f"no SHA-256 in the URL {url!r} (openai/CLIP's layout has it as the second-to-last path "
                "segment): pass sha256='<64 hex digits>', or sha256=False to accept an unverified file"
            )
        return found
    text = str(sha256).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return text


def _remove_stale_partials(target: str) -> None:
    """Under the file's lock no one else writes them: what is there is a dead process's leftover."""
    for leftover in (target + ".part", target + ".part.meta"):
        try:
            os.unlink(leftover)
        except OSError:
            pass


def _ensure(url: str, target: str, expected: Optional[str], progress: Progress, verify: bool) -> str:
    """The verified file at ``target``, downloading ``url`` there when it is missing or bad."""
    if os.path.lexists(target) and not os.path.isfile(target):
        raise DownloadError(f"{target} exists and is not a regular file")
    known_bad: Optional[tuple[int, int, int]] = None
    if os.path.isfile(target):
        if expected is None or cache.verify_file(target, expected, force=verify):
            return target
        known_bad = cache.file_identity(target)
        warnings.warn(
            f"{target} exists, but the SHA256 checksum does not match; re-downloading the file",
            stacklevel=3,
        )
    if is_offline():
        if known_bad is not None:
            raise ChecksumError(f"{target}: SHA-256 does not match {expected} and CLIPFAST_OFFLINE is set")
        raise ModelNotFoundError(
            f"{target} is not in the cache and CLIPFAST_OFFLINE is set (would download {url})"
        )
    folder = os.path.dirname(target) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        lock = _native.FileLock(target + ".lock")
    except OSError as err:
        raise DownloadError(f"cannot write to the cache folder {folder}: {err.strerror or err}") from err
    with lock:
        # Another process may have finished (or replaced the bad file) while this one waited.
        if os.path.isfile(target):
            now = cache.file_identity(target)
            if expected is None or (now != known_bad and cache.verify_file(target, expected)):
                _remove_stale_partials(target)
                return target
        cache.forget(target)
        if known_bad is not None and cache.file_identity(target) == known_bad:
            # Known to be bad: it must not outlive a failed re-download at the final path.
            try:
                os.unlink(target)
            except OSError:
                pass
        bar = _TqdmProgress(os.path.basename(target)) if progress is True else None
        callback: Optional[ProgressCallback] = bar
        if callable(progress):
            callback = progress
        try:
            report = _native.fetch(url, target, expected, callback, **_fetch_options())
        finally:
            if bar is not None:
                bar.close()
        if expected is not None:
            cache.write_record(target, report.sha256)
    return target


def download(
    url: str, root: Optional[str] = None, sha256: Union[str, bool, None] = None, progress: Progress = True
) -> str:
    """Download ``url`` into ``root`` (default ``~/.cache/clip``) and return the verified file's path.

    ``sha256`` defaults to the one in the URL (the second-to-last path segment, as openai/CLIP has
    it); ``ValueError`` when there is none, unless ``sha256=False`` accepts an unverified file. An
    existing file is reused: trusted from its verified-cache record, else hashed once; a bad one is
    re-downloaded with a warning. ``progress``: True for a tqdm bar, False for none, or a callable
    ``progress(done_bytes, total_bytes_or_None)``. Raises ``DownloadError`` (an OSError) when the
    transfer fails, ``ChecksumError`` (a RuntimeError) when the bytes do not match.
    """
    expected = _expected_hash(url, sha256)
    target = os.path.join(os.fspath(root) if root is not None else default_root(), _file_name(url))
    return _ensure(mirror_url(url), target, expected, progress, verify=False)


def resolve_model(name: str, root: Optional[str] = None, *, verify: bool = False) -> str:
    """The local path of the verified file of an official model (one of ``available_models()``),
    downloading it when needed; an existing file path is returned as is.

    ``root`` None or empty is ``~/.cache/clip`` (as openai/CLIP's ``download_root``). ``verify=True``
    re-hashes a cached file even when its verified-cache record vouches for it.
    Raises ``ModelNotFoundError`` for an unknown name that is not a file."""
    if name in MODELS:
        url = MODELS[name]
        expected = sha256_of_url(url)
        # As openai/CLIP's load (``download_root or ~/.cache/clip``): an empty root is the default.
        folder = os.fspath(root) if root is not None else ""
        target = os.path.join(folder or default_root(), _file_name(url))
        return _ensure(mirror_url(url), target, expected, True, verify=verify)
    if os.path.isfile(name):
        return name
    raise ModelNotFoundError(f"Model {name} not found; available models = {available_models()}")


class _CallableModule(types.ModuleType):
    """Lets ``clipfast.download(url, ...)`` be called while ``clipfast.download.resolve_model`` and
    ``from clipfast.download import download`` keep working."""

    def __call__(
        self,
        url: str,
        root: Optional[str] = None,
        sha256: Union[str, bool, None] = None,
        progress: Progress = True,
    ) -> str:
        return download(url, root, sha256, progress)


sys.modules[__name__].__class__ = _CallableModule
