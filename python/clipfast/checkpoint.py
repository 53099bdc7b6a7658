"""Read checkpoints without running their pickles: torch.save zip files, TorchScript archives
(OpenAI's published CLIP files), safetensors and NumPy ``.npz`` archives (big_vision's).

The Rust reader (``clipfast._native.CheckpointReader``) parses the file with its own restricted
unpickler, which never imports or calls anything, and reports where each tensor's bytes lie in
the file. This module turns that layout into ``torch.Tensor`` objects:

* ``mmap=True`` (default): tensors are views of one copy-on-write mapping of the file, made from
  the reader's own open file (``_map_file``), read lazily, kept alive by the tensors. Writing to
  them never changes the file. Replacing the file (a new file renamed over it), even between the
  parse and the map, is safe; truncating the same file in place while the tensors live makes the lost pages
  raise SIGBUS on access, exactly as with ``torch.load(mmap=True)``: use ``mmap=False`` if the
  file may be truncated under you.
* ``mmap=False``, or a ``dtype`` conversion: tensors own their memory, filled by Rust in
  parallel with the GIL released; source pages are dropped once converted, so an fp16 file does
  not stay resident beside its fp32 copy.
"""

from __future__ import annotations

import itertools
import math
import mmap as mmap_module
import os
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from . import _native
from .cache import file_identity

if TYPE_CHECKING:
    import torch

__all__ = ["CheckpointInfo", "TensorEntry", "inspect_checkpoint", "read_state_dict"]

#: A target dtype for floating tensors: one dtype, or ``(name, stored_dtype) -> dtype``.
DtypeArg = Union["torch.dtype", Callable[[str, "torch.dtype"], "torch.dtype"], None]

_FLOATING = ("float16", "bfloat16", "float32", "float64")


class TensorEntry(NamedTuple):
    """One tensor of a checkpoint, as stored."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, read without loading any tensor data."""

    path: str
    #: ``"torchscript"``, ``"torch.save"``, ``"safetensors"`` or ``"npz"``.
    format: str
    tensor_count: int
    #: torch dtype name (``"float16"``, ...) -> number of tensors.
    dtype_counts: dict[str, int]
    #: Bytes of tensor data (each shared storage counted once).
    total_bytes: int
    file_size: int
    tensors: tuple[TensorEntry, ...]

    def __str__(self) -> str:
        dtypes = ", ".join(f"{n} {d}" for d, n in sorted(self.dtype_counts.items()))
        lines = [
            f"{self.path}: {self.format}, {self.tensor_count} tensors ({dtypes}), "
            f"{self.total_bytes / 2**20:.1f} MiB of tensor data in {self.file_size / 2**20:.1f} MiB",
        ]
        lines += [f"  {t.name}: {t.dtype} {list(t.shape)}" for t in self.tensors]
        return "\n".join(lines)


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describe the tensors of a checkpoint (format, count, dtypes, bytes, names and shapes)
    without reading their data. Raises ``CheckpointError`` (naming the file) for a damaged or
    unknown file, ``UnsafeCheckpointError`` where a pickle names code in place of a weight."""
    reader = _open(os.fspath(path))
    rows = reader.tensors
    used = {row[4] for row in rows}
    total = sum(end - start for i, (_, _, start, end) in enumerate(reader.storages) if i in used)
    return CheckpointInfo(
        path=os.fspath(path),
        format=reader.format,
        tensor_count=len(rows),
        dtype_counts=dict(Counter(row[1] for row in rows)),
        total_bytes=total,
        file_size=reader.file_size,
        tensors=tuple(_entry(row) for row in rows),
    )


#: File name extensions that promise a format: a file that is another is refused (as the tools
#: those names are made for refuse it), not read for what it happens to hold.
_EXTENSION_FORMATS = {
    ".safetensors": ("safetensors",),
    ".pt": ("torch.save", "torchscript"),
    ".pth": ("torch.save", "torchscript"),
    ".bin": ("torch.save", "torchscript"),
    ".ckpt": ("torch.save", "torchscript"),
}


def _open(file: str) -> Any:
    """The native reader of ``file``; CheckpointError where its extension promises another format."""
    return _named_as_it_is(file, _native.CheckpointReader(file))


class ParseAhead:
    """The parse of a checkpoint file, started on a thread while the caller goes on (the Rust
    parser releases the GIL): ``clipfast.load`` resolves the source and imports what the build
    needs meanwhile, ~3 ms of a 5 ms RN50 parse that would otherwise wait for each other."""

    def __init__(self, file: str, identity: tuple[int, int, int]) -> None:
        self._identity = identity
        self._parsed: list[Any] = []
        self._thread = threading.Thread(target=self._parse, args=(file,), name="clipfast-parse", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, file: str) -> ParseAhead | None:
        """The parse of ``file`` started, where it is a regular file; else None."""
        identity = file_identity(file) if os.path.isfile(file) else None
        return cls(file, identity) if identity is not None else None

    def _parse(self, file: str) -> None:
        try:
            self._parsed.append(_native.CheckpointReader(file))
        except Exception:  # not a checkpoint, or damaged: the reader() call parses it again and says so
            pass

    def reader(self, file: str) -> Any:
        """The native reader of ``file``: the one parsed ahead where ``file`` is that file, unchanged."""
        self._thread.join()
        if self._parsed and file_identity(file) == self._identity:
            return _named_as_it_is(file, self._parsed.pop())
        return _open(file)


def _named_as_it_is(file: str, reader: Any) -> Any:
    """``reader``; CheckpointError where the extension of ``file`` promises another format."""
    expected = _EXTENSION_FORMATS.get(os.path.splitext(file)[1].lower())
    if expected is not None and reader.format not in expected:
        from .errors import CheckpointError

        raise CheckpointError(
            f"{file}: a {reader.format} file named {os.path.splitext(file)[1]!r}, which promises "
            f"{' or '.join(expected)}; rename it to what it is"
        )
    return reader


def _entry(row: Any) -> TensorEntry:
    """A reader row (name, dtype, shape, ...) as the public TensorEntry."""
    return TensorEntry(row[0], row[1], tuple(row[2]))


def read_state_dict(
    path: str | os.PathLike[str], *, mmap: bool = True, dtype: DtypeArg = None
) -> OrderedDict[str, torch.Tensor]:
    """Read the tensors of a checkpoint, never executing its pickle.

    - TorchScript archive (OpenAI's CLIP files): exactly ``torch.jit.load(path).state_dict()``
      (parameters and buffers, same names and order).
    - ``torch.save`` zip file: the dict of tensors at the top level, or under ``"state_dict"`` /
      ``"model"`` (training checkpoints; other entries such as optimizer state are not read), as
      ``torch.load(path, weights_only=True)`` gives it: same dtypes, shapes, strides, storage
      offsets and storage sharing; parameters come back as ``torch.nn.Parameter``.
    - safetensors: the tensors in file order, as ``safetensors.torch.load_file`` gives them.
    - ``.npz`` (``np.savez`` / ``np.savez_compressed``): one tensor per array, named as ``np.load``
      names them, with numpy's values, shapes and (C or Fortran) strides; object arrays are refused.

    ``dtype``: a ``torch.dtype`` for every floating tensor, or a callable
    ``(name, stored_dtype) -> dtype`` (return the stored dtype, or None, to keep it); integer and
    bool tensors are never converted. The conversion runs in Rust, in parallel.

    ``mmap=True``: unconverted tensors are copy-on-write views of the mapped file (no copy, no
    read until used; do not truncate the file in place while they live: SIGBUS). ``mmap=False``
    copies every tensor into memory it owns.

    Raises ``FileNotFoundError`` for a missing file, ``CheckpointError`` (a ``ValueError``
    naming the file and the problem) for anything that is not a readable checkpoint, and
    ``UnsafeCheckpointError`` where the pickle names code (``os.system``, a foreign class, ...)
    in place of a weight.
    """
    return _read_parsed(_open(os.fspath(path)), mmap=mmap, dtype=dtype)


def _read_parsed(reader: Any, *, mmap: bool, dtype: DtypeArg = None) -> OrderedDict[str, torch.Tensor]:
    """The tensors of the file ``reader`` parsed (``read_state_dict`` without a second parse by the
    path, which may name another file by now)."""
    pending = _plan_read(reader.path, mmap=mmap, dtype=dtype, reader=reader)
    pending.convert()
    return pending.finish()


class _PendingRead:
    """A read split so that the conversion runs beside other work: ``_plan_read`` (parse, lay out
    the converted storages in one allocation; GIL) -> ``start()`` (Rust threads, no GIL needed) ->
    ``finish()`` (the tensors, views of that memory, which may be made before the conversion ends)
    -> ``wait()`` (their values are there)."""

    def __init__(
        self,
        reader: Any,
        rows: list[Any],
        targets: list[str],
        bases: dict[tuple[int, str], torch.UntypedStorage],
        region: _Region | None,
        placed: dict[tuple[int, str], tuple[int, int]],
        jobs: list[tuple[int, int, str, int, str]],
    ) -> None:
        self.reader = reader
        self.rows = rows
        self.targets = targets
        self.bases = bases
        self.region = region
        self.placed = placed
        self.jobs = jobs
        self._conversion: Any = None

    def start(self) -> None:
        """Start filling the allocated storages from the file (dtype conversion on Rust threads)."""
        if self.jobs and self.region is not None:
            self._conversion = self.reader.convert_into(self.region.bytes, self.jobs)
        self.jobs = []

    def wait(self) -> None:
        """Wait for the conversion ``start`` began (GIL released); raises its error."""
        conversion, self._conversion = self._conversion, None
        if conversion is not None:
            conversion.wait()

    def abandon(self) -> None:
        """Wait for the conversion, ignoring its error: the load failed for another reason, which
        is the one reported (the memory it writes must outlive it all the same)."""
        try:
            self.wait()
        except Exception:
            pass

    def convert(self) -> None:
        """Fill the allocated storages from the file and wait for it."""
        self.start()
        self.wait()

    def declared_shapes(self) -> dict[str, TensorEntry]:
        """Each tensor's name, stored dtype and shape, as the file declares them (no data read)."""
        return _declared_shapes(self.rows)

    def finish(self) -> OrderedDict[str, torch.Tensor]:
        """The state dict: tensors over the storages (their values are there once ``wait`` returns)."""
        import torch

        bases = self.bases
        if self.region is not None:
            storage = self.region.storage
            for key, (at, nbytes) in self.placed.items():
                # Each tensor its own storage (a slice of the region): saving one saves only its bytes.
                bases[key] = storage[at : at + nbytes]
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for row, target in zip(self.rows, self.targets):
            name, _, shape, stride, storage_index, offset, requires_grad, is_parameter = row
            tensor = torch.empty(0, dtype=getattr(torch, target)).set_(
                bases[(storage_index, target)], offset, shape, stride
            )
            if is_parameter:
                tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
            elif requires_grad:
                tensor.requires_grad_(True)
            out[name] = tensor
        return out


def _parsed(path: str | os.PathLike[str], ahead: ParseAhead | None = None) -> Any:
    """The native reader of ``path``: the parse ``ahead`` started where there is one, else a new one."""
    file = os.fspath(path)
    return ahead.reader(file) if ahead is not None else _open(file)


def _declared_shapes(rows: list[Any]) -> dict[str, TensorEntry]:
    """Each tensor's name, stored dtype and shape, from a reader's rows (no data read)."""
    return {row[0]: _entry(row) for row in rows}


def _plan_read(
    path: str | os.PathLike[str], *, mmap: bool, dtype: DtypeArg, reader: Any = None
) -> _PendingRead:
    """Parse the checkpoint (or take ``reader``, its parse already done: see ``_parsed``) and
    allocate the memory of every storage that is converted or copied (see read_state_dict)."""
    file = os.fspath(path)
    if reader is None:
        reader = _open(file)
    storages = reader.storages
    rows = reader.tensors
    if callable(dtype):  # a plan (a torch.dtype is not callable)
        targets = [_target(dtype, row[0], row[1]) for row in rows]
    else:  # one target per stored dtype (the name is only for the error message)
        named = {row[1]: row[0] for row in rows}
        by_stored = {stored: _target(dtype, name, stored) for stored, name in named.items()}
        targets = [by_stored[row[1]] for row in rows]

    bases: dict[tuple[int, str], torch.UntypedStorage] = {}
    mapped: torch.UntypedStorage | None = None
    wanted: list[tuple[tuple[int, str], int, int, str, int]] = []
    seen: set[tuple[int, str]] = set()
    file_size = reader.file_size
    for row, target in zip(rows, targets):
        key = (row[4], target)
        if key in seen:
            continue
        seen.add(key)
        _, stored, start, end = storages[row[4]]
        itemsize = _itemsize(stored)
        if end > file_size:
            # A deflated or byte-swapped .npz member: no range of the file holds its elements as
            # they are; the reader inflates them and puts them in this machine's byte order.
            bases[key] = _unmapped(reader, row[4], stored, target).untyped_storage()
        elif mmap and target == stored and start % itemsize == 0:
            if mapped is None:
                mapped = _map_file(reader, file)
            bases[key] = mapped[start:end]
        else:
            wanted.append((key, start, end, stored, (end - start) // itemsize * _itemsize(key[1])))
    placed: dict[tuple[int, str], tuple[int, int]] = {}
    jobs: list[tuple[int, int, str, int, str]] = []
    region = _Region.allocate([nbytes for *_, nbytes in wanted]) if wanted else None
    if region is not None:
        for (key, start, end, stored, nbytes), at in zip(wanted, region.offsets):
            placed[key] = (at, nbytes)
            if nbytes:
                jobs.append((start, end, stored, at, key[1]))
    return _PendingRead(reader, rows, targets, bases, region, placed, jobs)


#: Bytes per element of the dtypes checkpoints hold, by torch name (others are asked of torch).
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2}
_ITEMSIZE.update({"int32": 4, "int64": 8, "uint8": 1, "bool": 1})


def _itemsize(dtype: str) -> int:
    import torch

    return _ITEMSIZE.get(dtype) or getattr(torch, dtype).itemsize


#: Below this many bytes in all, a region is not advised to use huge pages.
_ARENA_MIN_BYTES = 8 << 20
_HUGE_PAGE = 2 << 20
#: Each tensor's data starts on this boundary, as torch's CPU allocator aligns them.
_ALIGN = 64


class _Region:
    """Uninitialised memory for the tensors of a read, in one allocation: ``offsets[i]`` is where
    the ``i``-th of the sizes it was made for starts in ``bytes`` (a uint8 tensor over all of it;
    ``storage``, its storage).

    A model's weights are hundreds of MB of fresh memory, and with 4 KiB pages the kernel's cost
    of handing them over (one page fault per page) is most of a CPU load. So the memory is one
    anonymous private map, on Linux advised ``MADV_HUGEPAGE`` (2 MiB pages where the kernel has
    transparent huge pages for ``madvise`` regions; plain pages otherwise), unless free memory is
    short or the VM hands free memory back to its host (see the two checks below). The memory is
    the process's own, so it does not depend on the file; it is unmapped when the last tensor over
    it is freed."""

    def __init__(self, bytes_: torch.Tensor, offsets: list[int]) -> None:
        self.bytes = bytes_
        self.storage = bytes_.untyped_storage()
        self.offsets = offsets

    @classmethod
    def allocate(cls, sizes: list[int]) -> _Region:
        import torch

        spans = [_span(n) for n in sizes]
        total = sum(spans)
        advise = getattr(mmap_module, "MADV_HUGEPAGE", None)
        if total < _ARENA_MIN_BYTES or sys.platform != "linux":
            advise = None
        length = max(total + (_HUGE_PAGE if advise is not None else 0), 1)
        if sys.platform == "win32":
            region = mmap_module.mmap(-1, length)
        else:
            region = mmap_module.mmap(-1, length, flags=mmap_module.MAP_PRIVATE | mmap_module.MAP_ANONYMOUS)
        whole = torch.frombuffer(region, dtype=torch.uint8)
        head = 0
        if advise is not None:
            head = -whole.data_ptr() % _HUGE_PAGE  # a multiple of the page size: the map is page-aligned
            if _huge_pages_come_free(total) and not _free_pages_reported():
                try:
                    region.madvise(advise, head, total)
                except OSError:  # advice only (a kernel without THP): plain pages
                    pass
        return cls(whole, list(itertools.accumulate([head, *spans]))[:-1])


def _span(nbytes: int) -> int:
    """The bytes a tensor of ``nbytes`` takes in a region: aligned, and never none, so that no two
    storages (empty ones included) start at one address, which would make them look shared."""
    return max(-(-nbytes // _ALIGN) * _ALIGN, _ALIGN)


def allocate(specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
    """Uninitialised CPU tensors of the given shapes and dtypes, for the reader to fill: each its
    own storage, a slice of one ``_Region``."""
    import torch

    sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in specs]
    region = _Region.allocate(sizes)
    storage = region.storage
    return [
        torch.empty(0, dtype=dtype).set_(storage[at : at + nbytes], 0, shape, _contiguous_strides(shape))
        for (shape, dtype), nbytes, at in zip(specs, sizes, region.offsets)
    ]


_MEMINFO = "/proc/meminfo"


def _huge_pages_come_free(nbytes: int) -> bool:
    """Whether the kernel has ``nbytes`` of free memory to spare twice over (``MemFree``, not what
    reclaiming the page cache would give). Where it has not, each huge page of an advised region is
    found by direct compaction in the faulting thread (THP ``defrag=madvise``, the default), and
    plain pages are faster: RN50 on the 2-core VM with about 0.3 GB free and 1 GB of page cache
    loaded in 0.45-0.88 s advised and 0.30-0.39 s not (floor 0.24-0.31 s); with 5 GB free behind
    16 GB of page cache, advised stayed the faster (0.15 vs 0.17 s, medians of 6; 2026-12-07)."""
    try:
        with open(_MEMINFO, "rb") as f:
            for line in f:
                if line.startswith(b"MemFree:"):
                    return int(line.split()[1]) * 1024 >= 2 * nbytes
    except (OSError, ValueError, IndexError):
        pass
    return True  # unknown: advise, as before


_VIRTIO_DEVICES = "/sys/bus/virtio/devices"
_VIRTIO_BALLOON = "0x0005"  # the virtio device id of a memory balloon
_BALLOON_F_REPORTING = 5  # its feature bit for free page reporting


def _free_pages_reported() -> bool:
    """Whether this is a VM whose balloon reports free memory to the host (virtio free page
    reporting). The host then discards every free block of 2 MiB or more, so a huge page is
    almost always such a block, and its first touch waits for the host to fault in and zero all
    512 of its pages; plain pages mostly come from memory freed recently, still backed. Measured
    on a 2-core AMD EPYC VM with reporting on (2026-12-07): populating 300 MB of fresh memory took
    86-105 ms in plain pages and 26-625 ms advised; a fresh ViT-B/32 load 0.25-0.63 s advised
    against 0.16-0.21 s not (5 interleaved rounds; physical floor 0.17 s). So huge pages are not
    asked for there."""
    try:
        names = os.listdir(_VIRTIO_DEVICES)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(_VIRTIO_DEVICES, name, "device")) as f:
                if f.read().strip() != _VIRTIO_BALLOON:
                    continue
            with open(os.path.join(_VIRTIO_DEVICES, name, "features")) as f:
                bits = f.read().strip()  # one character per feature bit, bit 0 first
        except OSError:
            continue
        if bits[_BALLOON_F_REPORTING : _BALLOON_F_REPORTING + 1] == "1":
            return True
    return False


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _unmapped(reader: Any, storage: int, stored: str, target: str) -> torch.Tensor:
    """The elements of a deflated or byte-swapped ``.npz`` member as a 1-D tensor of dtype ``target``."""
    import torch

    data = reader.elements(storage)
    if not data:
        return torch.empty(0, dtype=getattr(torch, target))
    return torch.frombuffer(data, dtype=getattr(torch, stored)).to(getattr(torch, target))


#: Where Linux names a process's open files: opening ``<here>/<fd>`` opens that very file.
_PROC_FD = "/proc/self/fd"


def _map_file(reader: Any, file: str) -> torch.UntypedStorage:
    """A lazily read, copy-on-write (MAP_PRIVATE) mapping of the whole file ``reader`` parsed.

    The map comes from the reader's own open file, not from the path: a new file renamed over
    ``file`` since the parse (a download or conversion publishing a new version) would give the
    parse's offsets into the other file's bytes. On Linux torch maps ``/proc/self/fd/<fd>`` (the
    open file, whatever the path names now; no descriptor is kept); elsewhere on Unix, or where that
    cannot be opened, Python's mmap maps the descriptor (keeping a duplicate of it while the
    tensors live). Windows has no descriptor here and maps the path: it does not replace or delete
    a file that has a mapped view, and the reader's own map is one."""
    import torch

    fd = reader.fileno
    size = reader.file_size
    if fd is None:
        storage = torch.UntypedStorage.from_file(file, shared=False, nbytes=size)
    elif sys.platform == "linux" and os.path.isdir(_PROC_FD):
        try:
            storage = torch.UntypedStorage.from_file(f"{_PROC_FD}/{fd}", shared=False, nbytes=size)
        except RuntimeError:  # not reopenable (its mode changed since the open): map the descriptor
            storage = _map_descriptor(fd, size)
    else:
        storage = _map_descriptor(fd, size)
    assert isinstance(storage, torch.UntypedStorage)
    return storage


def _map_descriptor(fd: int, size: int) -> torch.UntypedStorage:
    """A copy-on-write map of the first ``size`` bytes of the open file ``fd``, as a storage that
    keeps the map alive."""
    import torch

    region = mmap_module.mmap(
        fd, size, flags=mmap_module.MAP_PRIVATE, prot=mmap_module.PROT_READ | mmap_module.PROT_WRITE
    )
    return torch.frombuffer(region, dtype=torch.uint8).untyped_storage()


def _target(dtype: DtypeArg, name: str, stored: str) -> str:
    """The torch dtype name tensor `name` (stored as `stored`) is returned in."""
    if dtype is None or stored not in _FLOATING:
        return stored
    import torch

    if isinstance(dtype, torch.dtype):
        wanted: torch.dtype | None = dtype
    elif callable(dtype):
        wanted = dtype(name, getattr(torch, stored))
        if wanted is None:
            return stored
    else:
        raise TypeError(f"dtype must be a torch.dtype or a callable, not {type(dtype).__name__}")
    if not isinstance(wanted, torch.dtype) or str(wanted).removeprefix("torch.") not in _FLOATING:
        raise TypeError(f"dtype for {name!r} must be a floating torch.dtype, not {wanted!r}")
    return str(wanted).removeprefix("torch.")
