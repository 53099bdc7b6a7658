"""The inputs of ``clipfast embed``: every INPUT argument becomes a list of samples, in a fixed order.

A sample is what one output row describes: an id (``image_path`` in the metadata: the path as
given, or the WebDataset key for tar input), where its image bytes are, and its caption (text, or
where the text is). The same arguments always give the same samples in the same order, so that
fixed chunks of them can be tied to output shards and a rerun finds its finished shards again.

Kinds (``input_format="auto"`` tells them apart as below; the summary says which was chosen):

- a folder: its image files, recursively, sorted by relative path; ``a.txt`` beside ``a.jpg`` is
  that image's caption (clip-retrieval's files layout);
- a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): the matching image files and ``.tar`` shards;
- a ``.tar`` WebDataset shard: WebDataset's rules (``tariterators.base_plus_ext`` and
  ``group_by_keys``): the key is the member name up to the first dot of its last component,
  folders included; the rest is the extension, lower-cased; a sample is a run of adjacent members
  with the same key; ``.txt`` is the caption, ``jpg``/``jpeg``/``png``/``webp``/... the image;
  members that are not regular files, have no extension, or are ``__*__`` files at the top are
  skipped as WebDataset skips them;
- a ``.csv`` or ``.parquet`` table with ``image_path`` and/or ``caption`` columns (relative image
  paths are relative to the table's folder);
- a ``.jsonl`` file of captions (each line a JSON string, or an object with ``caption`` or ``text``
  and optionally ``id`` or ``key``);
- any other text file: a list of image paths (relative to the list's folder) when its first
  non-empty line names an existing file, else captions, one per line (empty lines are skipped);
- an image file.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import re
import stat
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..errors import InputError, MissingDependencyError

__all__ = [
    "IMAGE_EXTENSIONS",
    "INPUT_FORMATS",
    "Plan",
    "Sample",
    "Source",
    "check_readable_file",
    "image_item",
    "list_samples",
    "make_plan",
    "plan_for",
    "read_source",
]

#: File name extensions (lower case) taken as images in folders and globs.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".jfif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
#: WebDataset extensions taken as a sample's image, in order of preference.
TAR_IMAGE_KEYS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "bmp",
    "gif",
    "tif",
    "tiff",
    "jfif",
    "ppm",
    "pgm",
    "pbm",
    "pnm",
)
INPUT_FORMATS = ("auto", "folder", "paths", "glob", "tar", "table", "captions", "image")

PathLike = Union[str, "os.PathLike[str]"]
log = logging.getLogger("clipfast.embed")
_GLOB_CHARS = re.compile(r"[*?\[]")
# WebDataset's split of a member name into key and extension (tariterators.base_plus_ext).
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class Source:
    """Where some bytes are: a whole file (``offset`` -1) or ``size`` bytes at ``offset`` of a tar."""

    path: str
    offset: int = -1
    size: int = -1

    def describe(self) -> str:
        return self.path if self.offset < 0 else f"{self.path}@{self.offset}+{self.size}"


@dataclass(frozen=True)
class Sample:
    """One output row: its id, the image's bytes (or None), its caption as text or as a place to
    read it from (or None), and an error found while listing (the sample then only reports it)."""

    id: str
    image: Optional[Source] = None
    caption: Optional[str] = None
    caption_source: Optional[Source] = None
    error: Optional[str] = None

    @property
    def has_caption(self) -> bool:
        return self.caption_source is not None or (self.caption is not None and self.caption != "")

    def where(self) -> str:
        """The file (or tar member) this sample comes from, for the errors file."""
        if self.image is not None:
            return self.image.describe()
        if self.caption_source is not None:
            return self.caption_source.describe()
        return self.id


@dataclass
class Plan:
    """All samples of a job, whether it embeds images and/or captions, and how they are cut into
    shards: shard ``k`` is ``samples[k * shard_size : (k + 1) * shard_size]``."""

    samples: list[Sample]
    images: bool
    text: bool
    shard_size: int
    descriptions: list[str] = field(default_factory=list)

    @property
    def shard_count(self) -> int:
        return -(-len(self.samples) // self.shard_size)

    def shard(self, k: int) -> range:
        start = k * self.shard_size
        return range(start, min(start + self.shard_size, len(self.samples)))

    def fingerprint(self) -> str:
        """SHA-256 of every sample's id, sources and caption: a rerun must see the same input."""
        h = hashlib.sha256()
        for s in self.samples:
            parts = (
                s.id,
                s.image.describe() if s.image else "",
                s.caption if s.caption is not None else "",
                s.caption_source.describe() if s.caption_source else "",
                s.error or "",
            )
            h.update("\0".join(parts).encode("utf-8", "surrogateescape"))
            h.update(b"\n")
        return h.hexdigest()


# --- reading -----------------------------------------------------------------------------------


def check_readable_file(path: str) -> None:
    """Raise ``OSError`` where ``path`` is a FIFO, a socket or a device: reading one named like an
    image (``os.walk`` lists them; path lists and tables may name them) blocks until a writer
    comes, or never ends. Missing files and folders are left to the read, which names them."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OSError(f"{path}: not a regular file")


def image_item(src: Source, handles: Optional[dict[str, int]] = None) -> Union[str, bytes]:
    """What ``preprocess_batch`` takes for the image at ``src``: a whole file's path (checked to be
    a regular file, as preprocess_batch then reads it), else the tar member's bytes."""
    if src.offset < 0:
        check_readable_file(src.path)
        return src.path
    return read_source(src, handles)


def read_source(src: Source, handles: Optional[dict[str, int]] = None) -> bytes:
    """The bytes of ``src``; ``handles`` (path -> descriptor) keeps tar files open between calls
    (the caller closes them). A tar member that ends before its declared size is an error."""
    if src.offset < 0:
        check_readable_file(src.path)
        with open(src.path, "rb") as f:
            return f.read()
    fd = handles.get(src.path) if handles is not None else None
    opened = fd is None
    if fd is None:
        fd = os.open(src.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        if handles is not None:
            handles[src.path] = fd
            opened = False
    try:
        data = _pread(fd, src.size, src.offset)
    finally:
        if opened:
            os.close(fd)
    if len(data) != src.size:
        raise OSError(
            f"{src.path}: tar member at byte {src.offset} is truncated ({len(data)} of {src.size} bytes)"
        )
    return data


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        chunks = []
        while size > 0:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    os.lseek(fd, offset, os.SEEK_SET)  # no pread (Windows): handles are then not shared by threads
    return os.read(fd, size)


def close_handles(handles: dict[str, int]) -> None:
    for fd in handles.values():
        try:
            os.close(fd)
        except OSError:
            pass
    handles.clear()


def caption_text(sample: Sample, handles: Optional[dict[str, int]] = None) -> str:
    """The caption of ``sample`` (read from its file or tar member when needed), as clip-retrieval
    reads it: the whole text, decoded as UTF-8, unchanged."""
    if sample.caption_source is None:
        return sample.caption or ""
    data = read_source(sample.caption_source, handles)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"caption {sample.caption_source.describe()} is not UTF-8 text ({err})") from err


# --- listing -----------------------------------------------------------------------------------


def make_plan(
    inputs: Sequence[PathLike],
    *,
    shard_size: int,
    input_format: str = "auto",
    text: Optional[bool] = None,
    image_column: str = "image_path",
    caption_column: str = "caption",
    images: bool = True,
) -> Plan:
    """List every input's samples, in order, and decide what the job embeds: images when any
    sample has one (unless ``images=False``); captions when every sample has one (else a warning
    says they are left out), or when ``text=True``; never with ``text=False``; a job without
    images embeds captions. In an image job a sample without an image, and in a job with text one
    without a caption, becomes an error row."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, not {shard_size!r}")
    samples, descriptions = list_samples(
        inputs, input_format=input_format, image_column=image_column, caption_column=caption_column
    )
    return plan_for(samples, descriptions, shard_size=shard_size, text=text, images=images)


def plan_for(
    samples: list[Sample],
    descriptions: list[str],
    *,
    shard_size: int,
    text: Optional[bool] = None,
    images: bool = True,
) -> Plan:
    """The plan of ``make_plan`` for samples already listed."""
    listed = [s for s in samples if s.error is None]
    has_images = images and any(s.image is not None for s in listed)
    captions = any(s.has_caption for s in listed)
    if not any(s.image is not None or s.has_caption for s in listed):
        raise InputError(f"no images or captions found in {'; '.join(descriptions)}")
    if text and not captions:
        raise InputError("text=True, but no input has captions")
    if not has_images and not captions:
        raise InputError("the inputs hold images only, and the job embeds no images")
    if text is False and not has_images:
        raise InputError("text=False, but the inputs hold only captions (a text-only job)")
    notes = list(descriptions)
    if text is None and has_images and captions:
        with_caption = sum(1 for s in listed if s.has_caption)
        if with_caption < len(listed):
            # Some samples lack one: an image job, captions left out, and said so (text=True
            # embeds them and reports the samples without one as errors).
            text = False
            note = (
                f"captions left out: only {with_caption} of {len(listed)} samples have one "
                "(text=True / --text embeds them and lists the others as errors)"
            )
            log.warning(note)
            notes.append(note)
    use_text = (captions if text is None else bool(text)) or not has_images
    samples = [_with_missing(s, has_images, use_text) for s in samples]
    return Plan(samples, has_images, use_text, shard_size, notes)


def list_samples(
    inputs: Union[PathLike, Sequence[PathLike]],
    *,
    input_format: str = "auto",
    image_column: str = "image_path",
    caption_column: str = "caption",
) -> tuple[list[Sample], list[str]]:
    """Every input's samples, in order, and one line per input saying what it was read as."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, not {input_format!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no input given")
    samples: list[Sample] = []
    descriptions: list[str] = []
    options = _TableColumns(image_column, caption_column)
    for raw in inputs:
        arg = os.fspath(raw)
        kind = input_format if input_format != "auto" else _detect(arg)
        found = list(_LISTERS[kind](arg, options))
        descriptions.append(f"{arg}: {_KIND_NAMES[kind]}, {len(found)} samples")
        samples.extend(found)
    return samples, descriptions


def _with_missing(s: Sample, images: bool, text: bool) -> Sample:
    if s.error is not None:
        return s
    if images and s.image is None:
        return Sample(s.id, None, s.caption, s.caption_source, "no image in this sample")
    if not images and not s.has_caption and s.image is not None:
        return Sample(s.id, s.image, error="no caption for this sample")
    if text and not s.has_caption:
        return Sample(s.id, s.image, None, None, "no caption for this sample")
    if not text and s.image is not None:
        return Sample(s.id, s.image)
    return s


@dataclass(frozen=True)
class _TableColumns:
    image: str
    caption: str


def _detect(arg: str) -> str:
    if os.path.isdir(arg):
        return "folder"
    if os.path.isfile(arg):
        lower = arg.lower()
        if lower.endswith(".tar"):
            return "tar"
        if lower.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")):
            raise InputError(
                f"{arg}: compressed tar files are not read (WebDataset shards are plain .tar); "
                "decompress it first"
            )
        if lower.endswith((".csv", ".parquet")):
            return "table"
        if lower.endswith(".jsonl"):
            return "captions"
        if os.path.splitext(lower)[1] in IMAGE_EXTENSIONS:
            return "image"
        return "paths" if _lists_paths(arg) else "captions"
    if _GLOB_CHARS.search(arg):
        return "glob"
    raise InputError(f"{arg}: no such file or folder")


def _lists_paths(path: str) -> bool:
    """A text file lists paths when its first non-empty line names an existing file."""
    base = os.path.dirname(os.path.abspath(path))
    for line in _text_lines(path):
        entry = line.strip()
        if entry:
            return os.path.isfile(os.path.join(base, entry))
    return False


def _text_lines(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for line in f:
                yield line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err}); is it an image or an archive?") from err


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_folder(arg: str, options: _TableColumns) -> Iterator[Sample]:
    found: list[tuple[str, str]] = []  # (relative posix path, full path)
    for dirpath, dirnames, filenames in os.walk(arg):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, arg)
        for name in filenames:
            if _is_image_name(name):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found.append((rel.replace(os.sep, "/"), os.path.join(arg, rel)))
    found.sort()
    for _, full in found:
        caption = os.path.splitext(full)[0] + ".txt"
        yield Sample(full, Source(full), caption_source=Source(caption) if os.path.isfile(caption) else None)


def _list_image(arg: str, options: _TableColumns) -> Iterator[Sample]:
    yield Sample(arg, Source(arg))


def _list_glob(arg: str, options: _TableColumns) -> Iterator[Sample]:
    matches = sorted(glob.glob(arg, recursive=True))
    files = [m for m in matches if os.path.isfile(m)]
    if not files:
        raise InputError(f"{arg}: no file matches this pattern")
    for m in files:
        if m.lower().endswith(".tar"):
            yield from _list_tar(m, options)
        elif _is_image_name(m):
            yield Sample(m, Source(m))
        # Other files (captions beside images, metadata) are not samples of their own.


def _list_paths(arg: str, options: _TableColumns) -> Iterator[Sample]:
    base = os.path.dirname(os.path.abspath(arg))
    for line in _text_lines(arg):
        entry = line.strip()
        if entry:
            yield Sample(entry, Source(os.path.join(base, entry)))


def _list_captions(arg: str, options: _TableColumns) -> Iterator[Sample]:
    jsonl = arg.lower().endswith(".jsonl")
    for number, line in enumerate(_text_lines(arg), start=1):
        if not line.strip():
            continue
        sample_id = f"{arg}:{number}"
        if not jsonl:
            yield Sample(sample_id, caption=line)
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            yield Sample(sample_id, error=f"line {number} is not JSON: {err}")
            continue
        if isinstance(value, dict):
            key = next((k for k in ("id", "key") if k in value), None)
            if key is not None:
                sample_id = str(value[key])
            value = value.get("caption", value.get("text"))
        if not isinstance(value, str):
            yield Sample(
                sample_id, error=f"line {number} has no caption (a JSON string, or 'caption' / 'text')"
            )
        else:
            yield Sample(sample_id, caption=value)


def _list_table(arg: str, options: _TableColumns) -> Iterator[Sample]:
    columns, rows = _read_table(arg, options)
    image_col = options.image if options.image in columns else None
    caption_col = options.caption if options.caption in columns else None
    if image_col is None and caption_col is None:
        raise InputError(
            f"{arg}: needs a column {options.image!r} and/or {options.caption!r}; it has {sorted(columns)}"
        )
    base = os.path.dirname(os.path.abspath(arg))
    said = False
    for number, row in enumerate(rows, start=1):
        path = row.get(image_col) if image_col else None
        caption = row.get(caption_col) if caption_col else None
        if caption is not None and not isinstance(caption, str):
            if not said:  # a typed table (parquet) whose caption column is not text: say so once
                log.warning(
                    "%s: column %r holds %s values, not text; they are embedded as their text (%r)",
                    arg,
                    caption_col,
                    type(caption).__name__,
                    str(caption),
                )
                said = True
            caption = str(caption)
        if image_col is None:
            yield Sample(f"{arg}:{number}", caption=caption)
        elif path is None or str(path) == "":
            yield Sample(f"{arg}:{number}", caption=caption, error=f"row {number} has no {image_col}")
        else:
            text = str(path)
            yield Sample(text, Source(os.path.join(base, text)), caption=caption)


def _read_table(path: str, options: _TableColumns) -> tuple[set[str], Iterable[dict[str, Any]]]:
    if path.lower().endswith(".parquet"):
        pq = require_pyarrow("reading parquet input").parquet
        try:
            schema = pq.read_schema(path)
            wanted = [c for c in (options.image, options.caption) if c in schema.names]
            table = pq.read_table(path, columns=wanted)
        except Exception as err:  # pyarrow's own errors (ArrowInvalid, OSError ...)
            raise InputError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from err
        return set(schema.names), table.to_pylist()
    f = open(path, encoding="utf-8", newline="")
    try:
        reader = csv.DictReader(f)
        names = set(reader.fieldnames or [])
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a readable CSV file ({err})") from err
    finally:
        f.close()
    return names, rows


def _list_tar(arg: str, options: _TableColumns) -> Iterator[Sample]:
    """WebDataset's samples of a plain tar, from its member headers (no member data is read)."""
    current_key: Optional[str] = None
    members: dict[str, tarfile.TarInfo] = {}
    problem: Optional[str] = None

    def sample() -> Optional[Sample]:
        if current_key is None:
            return None
        image = next((members[k] for k in TAR_IMAGE_KEYS if k in members), None)
        text = members.get("txt")
        return Sample(
            current_key,
            Source(arg, image.offset_data, image.size) if image is not None else None,
            caption_source=Source(arg, text.offset_data, text.size) if text is not None else None,
            error=problem,
        )

    try:
        archive = tarfile.open(arg, "r:")  # plain tar only: members are read in place, at their offsets
    except (tarfile.TarError, OSError) as err:
        yield Sample(arg, Source(arg), error=f"not a readable tar file: {err}")
        return
    with archive:
        while True:
            try:
                info = archive.next()
            except (tarfile.TarError, OSError, EOFError) as err:
                done = sample()
                if done is not None:
                    yield done
                last = current_key or "the start"
                yield Sample(f"{arg}#damaged", Source(arg), error=f"tar is damaged after {last}: {err}")
                return
            if info is None:
                break
            if not info.isreg():
                continue
            name = info.name
            if "/" not in name and name.startswith("__") and name.endswith("__"):
                continue  # WebDataset's own metadata members
            match = _KEY_EXT.match(name)
            if match is None:
                continue
            key, ext = match.group(1), match.group(2).lower()
            if key != current_key:
                done = sample()
                if done is not None:
                    yield done
                current_key, members, problem = key, {}, None
            if ext in members:
                problem = f"duplicate member {name!r} in this sample (WebDataset refuses the sample)"
            members[ext] = info
        done = sample()
        if done is not None:
            yield done


_LISTERS = {
    "folder": _list_folder,
    "paths": _list_paths,
    "glob": _list_glob,
    "tar": _list_tar,
    "table": _list_table,
    "captions": _list_captions,
    "image": _list_image,
}
_KIND_NAMES = {
    "folder": "folder of images",
    "paths": "list of image paths",
    "glob": "glob pattern",
    "tar": "WebDataset tar shard",
    "table": "table of image_path, caption",
    "captions": "captions (text only)",
    "image": "image file",
}


def require_pyarrow(purpose: str) -> Any:
    """``pyarrow`` (with ``pyarrow.parquet`` loaded), or an ImportError that says how to get it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise MissingDependencyError(
            f"clipfast embed needs pyarrow for {purpose}: pip install 'clipfast[embed]' (or pyarrow)",
            name="pyarrow",
        ) from err
    return pyarrow
