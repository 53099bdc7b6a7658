"""The output folder of ``clipfast embed``: clip-retrieval's layout, written shard by shard, safely.

::

    OUT/img_emb/img_emb_00000.npy       [n, d] embeddings of shard 0's images (one dtype for all)
    OUT/text_emb/text_emb_00000.npy     [n, d] embeddings of its captions (when the job has text)
    OUT/metadata/metadata_00000.parquet image_path (id; the WebDataset key for tar input), caption
    OUT/stats/00000.json                counts and durations (numbers only, as clip-retrieval's)
    OUT/errors/00000.jsonl              the shard's samples that failed: id, source, error
    OUT/errors.jsonl                    all of them (rebuilt at the end of every run)
    OUT/clipfast_embed.json             the job: model and its SHA-256, settings, inputs
    OUT/summary.json                    the last run: counts, items/s, ...

Row i of a shard's image, text and metadata files is the same sample. Shard numbers are zero
padded to one width for the whole folder (autofaiss and clip-retrieval sort file names as text and
pair ``.npy`` with ``.parquet`` files by that order); a shard whose every sample failed writes no
embedding or metadata file (autofaiss skips empty ``.npy`` files, which would shift that pairing).

Every file is written under a temporary name (``*.tmp-*``, which no reader's ``*.npy`` /
``*.parquet`` glob matches) and renamed when complete; ``stats/N.json`` is written last and marks
the shard finished. A folder holds one job: ``clipfast_embed.json`` is compared on every rerun, and a
folder written with another model, other settings or other inputs is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

import numpy as np

from ..errors import OutputFolderError
from .sources import require_pyarrow

__all__ = ["MANIFEST_NAME", "Layout", "OutputFolder", "ShardResult"]

MANIFEST_NAME = "clipfast_embed.json"
SUMMARY_NAME = "summary.json"
ERRORS_NAME = "errors.jsonl"
LOCK_NAME = ".clipfast_embed.lock"
FORMAT = "clipfast-embed-1"
_FOLDERS = ("img_emb", "text_emb", "metadata", "stats", "errors")
_TMP = ".tmp-"


def shard_width(shard_count: int) -> int:
    """Digits of the shard numbers: at least 5, enough for the last one."""
    return max(5, len(str(max(shard_count - 1, 0))))


@dataclass
class ShardResult:
    """What one shard holds once all its samples are through the model."""

    index: int
    ids: list[str]
    captions: Optional[list[str]]
    image: Optional[np.ndarray]  # [rows, dim]
    text: Optional[np.ndarray]
    errors: list[dict[str, str]]
    stats: dict[str, float] = field(default_factory=dict)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    tmp = path.with_name(f"{path.name}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=1, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


def _string_array(pa: Any, values: Sequence[str]) -> Any:
    """An Arrow ``string`` column built from its buffers: ``pa.array(list)`` imports pandas to look
    for pandas objects (1+ s on a busy machine, once per process)."""
    data = [_utf8(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    if offsets[-1] >= 2**31:  # string's 32-bit offsets: larger text goes as large_string
        return pa.LargeStringArray.from_buffers(
            len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data))
        )
    return pa.StringArray.from_buffers(
        len(data), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(data))
    )


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8 for parquet (file names with undecodable bytes keep them as \\xNN)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Layout:
    """Where a shard's files go, and how they are written (picklable: Ray's write tasks use it)."""

    root: str
    width: int
    images: bool
    text: bool

    def name(self, k: int) -> str:
        return str(k).zfill(self.width)

    def path(self, folder: str, k: int) -> Path:
        n = self.name(k)
        names = {
            "img_emb": f"img_emb_{n}.npy",
            "text_emb": f"text_emb_{n}.npy",
            "metadata": f"metadata_{n}.parquet",
            "stats": f"{n}.json",
            "errors": f"{n}.jsonl",
        }
        return Path(self.root) / folder / names[folder]

    def data_folders(self) -> list[str]:
        return [f for f, on in (("img_emb", self.images), ("text_emb", self.text), ("metadata", True)) if on]

    def is_done(self, k: int) -> bool:
        """Finished: its stats file is complete and the files it counts are there."""
        try:
            stats = json.loads(self.path("stats", k).read_text())
            rows = int(stats["sample_count"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return rows == 0 or all(self.path(f, k).is_file() for f in self.data_folders())

    def write_shard(self, result: ShardResult) -> None:
        """Write one shard's files (each complete or not at all), the stats file last."""
        pa = require_pyarrow("the metadata files (parquet)")
        k = result.index
        t0 = time.perf_counter()
        rows = len(result.ids)
        for folder in ["stats", *self.data_folders(), "errors"]:
            self.path(folder, k).unlink(missing_ok=True)  # a previous attempt's, the mark first
        if rows:
            if self.images:
                _check_rows(result.image, rows, "image")
                self._write_npy(self.path("img_emb", k), result.image)
            if self.text:
                _check_rows(result.text, rows, "text")
                self._write_npy(self.path("text_emb", k), result.text)
            columns: dict[str, Any] = {}
            if self.images:
                columns["image_path"] = _string_array(pa, result.ids)
            if self.text:
                assert result.captions is not None
                columns["caption"] = _string_array(pa, result.captions)
            table = pa.Table.from_arrays(list(columns.values()), names=list(columns))
            _atomic_write(self.path("metadata", k), lambda f: pa.parquet.write_table(table, f))
        if result.errors:
            lines = b"".join(_json_line(e) for e in result.errors)
            _atomic_write(self.path("errors", k), lambda f: f.write(lines))
        stats = dict(result.stats)
        stats.update(sample_count=rows, error_count=len(result.errors))
        stats["write_duration"] = stats.get("write_duration", 0.0) + time.perf_counter() - t0
        payload = _json_bytes({k2: v for k2, v in stats.items() if isinstance(v, (int, float))})
        _atomic_write(self.path("stats", k), lambda f: f.write(payload))

    @staticmethod
    def _write_npy(path: Path, array: Optional[np.ndarray]) -> None:
        arr = np.ascontiguousarray(array)
        _atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))

    def errors(self, k: int) -> list[dict[str, Any]]:
        try:
            text = self.path("errors", k).read_text(encoding="utf-8")
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _check_rows(array: Optional[np.ndarray], rows: int, what: str) -> None:
    if array is None or array.ndim != 2 or array.shape[0] != rows:
        shape = None if array is None else array.shape
        raise ValueError(f"{what} embeddings of shape {shape} for {rows} rows")


def _json_line(entry: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(entry), ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")


class OutputFolder:
    """The folder of one job, held by one run at a time (a lock file; refused while another run
    holds it), checked against the job's manifest before anything is written."""

    def __init__(self, layout: Layout, lock_fd: Optional[int]) -> None:
        self.layout = layout
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, root: str, manifest: dict[str, Any], layout: Layout) -> OutputFolder:
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise OutputFolderError(f"{root}: exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        manifest_path = path / MANIFEST_NAME
        _refuse_foreign(path, manifest_path)  # before the lock file is made in it
        lock_fd = _lock(path / LOCK_NAME)
        try:
            if manifest_path.is_file():
                try:
                    old = json.loads(manifest_path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as err:
                    raise OutputFolderError(
                        f"{manifest_path}: unreadable ({err}); not resuming into {root}"
                    ) from err
                _compare(root, old, manifest)
            else:
                _refuse_foreign(path, manifest_path)
            for folder in _FOLDERS:
                (path / folder).mkdir(exist_ok=True)
            _remove_partial_files(path)
            if not manifest_path.is_file():
                payload = _json_bytes(manifest)
                _atomic_write(manifest_path, lambda f: f.write(payload))
        except BaseException:
            _unlock(lock_fd)
            raise
        return cls(layout, lock_fd)

    def close(self) -> None:
        _unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pending(self, shard_count: int) -> list[int]:
        return [k for k in range(shard_count) if not self.layout.is_done(k)]

    def finish(self, shard_count: int, summary: dict[str, Any]) -> int:
        """Rebuild ``errors.jsonl`` from the shards' error files and write ``summary.json``; returns
        the number of errors in the whole folder."""
        root = Path(self.layout.root)
        chunks = []
        count = 0
        for k in range(shard_count):
            try:
                data = self.layout.path("errors", k).read_bytes()
            except OSError:
                continue
            chunks.append(data)
            count += data.count(b"\n")
        joined = b"".join(chunks)
        _atomic_write(root / ERRORS_NAME, lambda f: f.write(joined))
        payload = _json_bytes(summary)
        _atomic_write(root / SUMMARY_NAME, lambda f: f.write(payload))
        return count


def _refuse_foreign(path: Path, manifest_path: Path) -> None:
    if manifest_path.is_file():
        return
    others = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
    if others:
        raise OutputFolderError(
            f"{path}: not empty and not a clipfast embed folder (it holds {', '.join(others[:5])}"
            f"{' ...' if len(others) > 5 else ''}); choose an empty or new folder"
        )


def _lock(path: Path) -> Optional[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; one run per folder is then up to the user
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        raise OutputFolderError(
            f"{path.parent}: another clipfast embed run is writing to this folder"
        ) from err
    return fd


def _unlock(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def _remove_partial_files(root: Path) -> None:
    """Temporary files left by a run that was killed (this run holds the lock: none are live)."""
    for folder in (root, *(root / f for f in _FOLDERS)):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if _TMP in entry.name and entry.is_file():
                entry.unlink(missing_ok=True)


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, value


#: Manifest entries that describe the run, not the job: they may differ between runs.
_RUN_ONLY = ("inputs", "created", "clipfast_version")


def _compare(root: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    if old.get("format") != new.get("format"):
        raise OutputFolderError(
            f"{root}: written by another version of clipfast embed ({old.get('format')!r})"
        )
    old_model, new_model = old.get("model", {}), new.get("model", {})
    same_model = (
        old_model.get("sha256") == new_model.get("sha256")
        if old_model.get("sha256") and new_model.get("sha256")
        else old_model.get("name") == new_model.get("name")
    )
    if not same_model:
        raise OutputFolderError(
            f"{root}: written with model {old_model.get('name')} (sha256 {old_model.get('sha256')}), "
            f"not {new_model.get('name')} (sha256 {new_model.get('sha256')}); "
            "use another output folder, or remove this one to start over"
        )
    a = dict(_flatten("", {k: v for k, v in old.items() if k != "model"}))
    b = dict(_flatten("", {k: v for k, v in new.items() if k != "model"}))
    differ = [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if not k.startswith(_RUN_ONLY) and a.get(k) != b.get(k)
    ]
    if differ:
        raise OutputFolderError(
            f"{root}: written with other settings or inputs ({'; '.join(differ)}); "
            "use another output folder, or the settings it was written with"
        )


def combined(values: Sequence[Optional[np.ndarray]]) -> Optional[np.ndarray]:
    parts = [v for v in values if v is not None]
    return np.concatenate(parts) if parts else None
