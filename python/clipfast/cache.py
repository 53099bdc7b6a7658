"""Verified-cache records: what was hashed, so a later load trusts the file without re-reading it.

After a file's SHA-256 has been checked, ``<file>.verified`` (a small JSON file beside it) records
the hash, the size and the modification time (ns) it had. A later check trusts the file when the
record names the expected hash and the file still has that size and mtime; anything else (a
changed size or mtime, a missing or damaged record) means hashing it again. Where the folder is
read-only (a shared cache), the record goes to ``$XDG_CACHE_HOME/clipfast/verified/`` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from . import _native

__all__ = [
    "RECORD_SUFFIX",
    "VerifiedRecord",
    "forget",
    "hash_file",
    "is_verified",
    "read_record",
    "record_path",
    "verify_file",
    "write_record",
]

RECORD_SUFFIX = ".verified"
_FORMAT = 1

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class VerifiedRecord:
    """What was true of a file when its hash was checked."""

    sha256: str
    size: int
    mtime_ns: int

    def matches(self, stat: os.stat_result, sha256: str) -> bool:
        return (
            self.sha256 == sha256.lower() and self.size == stat.st_size and self.mtime_ns == stat.st_mtime_ns
        )


def record_path(path: PathLike) -> Path:
    """Where the record of ``path`` is kept beside it."""
    p = Path(path)
    return p.with_name(p.name + RECORD_SUFFIX)


def _fallback_record_path(path: PathLike) -> Path:
    """Where the record goes when the file's folder is read-only: the user's own cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha256(os.path.abspath(os.fspath(path)).encode("utf-8", "surrogateescape")).hexdigest()
    return Path(base) / "clipfast" / "verified" / f"{key}.json"


def _load(path: Path) -> Optional[VerifiedRecord]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != _FORMAT:
            return None
        return VerifiedRecord(str(data["sha256"]).lower(), int(data["size"]), int(data["mtime_ns"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
        return None


def read_record(path: PathLike) -> Optional[VerifiedRecord]:
    """The record of ``path`` (beside it, else in the user's cache), or None."""
    return _load(record_path(path)) or _load(_fallback_record_path(path))


def is_verified(path: PathLike, sha256: str) -> bool:
    """True when a record says ``path`` hashed to ``sha256`` and it has not changed since (no hashing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    sha256 = sha256.lower()
    return any(
        record is not None and record.matches(stat, sha256)
        for record in (_load(record_path(path)), _load(_fallback_record_path(path)))
    )


def _write_json_atomically(target: Path, payload: dict[str, object]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # here: the CLI imports this module; only writing a record needs it

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_record(path: PathLike, sha256: str, stat: Optional[os.stat_result] = None) -> Optional[Path]:
    """Records that ``path`` (as ``stat`` describes it, by default as it is now) hashes to ``sha256``.

    Returns where the record went, or None when it could be written nowhere (never an error: the
    record only saves work)."""
    try:
        stat = stat or os.stat(path)
    except OSError:
        return None
    payload: dict[str, object] = {
        "format": _FORMAT,
        "sha256": sha256.lower(),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "file": os.path.basename(os.fspath(path)),
    }
    for target in (record_path(path), _fallback_record_path(path)):
        try:
            _write_json_atomically(target, payload)
            return target
        except OSError:
            continue
    return None


def forget(path: PathLike) -> None:
    """Removes the records of ``path`` (it failed a check, or is about to be replaced)."""
    for target in (record_path(path), _fallback_record_path(path)):
        try:
            os.unlink(target)
        except OSError:
            pass


def hash_file(path: PathLike) -> str:
    """SHA-256 of a file (lower-case hex), in Rust with the GIL released; Ctrl-C stops it."""
    return _native.sha256_file(os.fspath(path))


def verify_file(path: PathLike, sha256: str, *, force: bool = False) -> bool:
    """True when ``path`` hashes to ``sha256``: trusted from its record unless ``force``, else hashed
    (and the outcome recorded). Raises OSError when the file cannot be read."""
    sha256 = sha256.lower()
    if not force and is_verified(path, sha256):
        return True
    before = os.stat(path)
    digest = hash_file(path)
    after = os.stat(path)
    if digest != sha256:
        forget(path)
        return False
    unchanged = (before.st_size, before.st_mtime_ns, before.st_ino) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ino,
    )
    if unchanged:  # a file that changed while it was read is not what was hashed
        write_record(path, sha256, before)
    return True


def file_identity(path: str) -> Optional[tuple[int, int, int]]:
    """(size, mtime_ns, inode) of the file at ``path``, None where it cannot be stat'ed: equal
    identities mean the same file, unchanged (a file renamed over the path, or rewritten, differs)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)
