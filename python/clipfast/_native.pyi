# Hand-written stubs for the Rust extension module `clipfast._native`.
# Every function the Rust side exports is declared here; `make lint` checks them with mypy's stubtest.

import os
import pathlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, final

from typing_extensions import Self

__all__ = [
    "CheckpointReader",
    "ClipTokenizer",
    "Conversion",
    "FetchReport",
    "FileLock",
    "Sha256",
    "__version__",
    "clip_fast_clean",
    "clip_fast_path_versions",
    "clip_pretokenize",
    "clip_pretokenizer_classes",
    "clip_pretokenizer_classes_replaced",
    "clip_set_pretokenizer_classes",
    "fetch",
    "free_disk_bytes",
    "preprocess_into",
    "resize_crop",
    "set_pillow_vertical_first",
    "sha256_file",
    "simd_level",
    "use_pillow_libjpeg",
]

__version__: str

# --- download ---

@final
class Sha256:
    """``hashlib.sha256``-like incremental SHA-256 (SHA-NI where the CPU has it)."""

    def __new__(cls, data: bytes | None = None) -> Self: ...
    def update(self, data: bytes) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Sha256: ...
    @property
    def length(self) -> int: ...

def sha256_file(path: str | os.PathLike[str]) -> str: ...

@final
class FetchReport:
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def transferred(self) -> int: ...
    @property
    def resumed_from(self) -> int: ...
    @property
    def attempts(self) -> int: ...

def fetch(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    progress: Callable[[int, int | None], object] | None = None,
    *,
    expected_size: int | None = None,
    connect_timeout: float = 30.0,
    read_timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    tick_interval: float = 0.1,
    min_rate: int = 1024,
) -> FetchReport: ...

@final
class FileLock:
    def __new__(cls, path: str | os.PathLike[str]) -> Self: ...
    def acquire(self, timeout: float | None = None, poll_interval: float = 0.05) -> bool: ...
    def release(self) -> None: ...
    @property
    def locked(self) -> bool: ...
    @property
    def path(self) -> Path: ...
    def __enter__(self) -> FileLock: ...
    def __exit__(self, *args: object) -> bool: ...

def free_disk_bytes(path: str | os.PathLike[str]) -> int: ...

# --- reader ---

@final
class CheckpointReader:
    """A checkpoint mapped and parsed (torch.save zip, TorchScript archive, safetensors, npz)."""

    def __new__(cls, path: str | os.PathLike[str]) -> CheckpointReader: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def format(self) -> str: ...
    @property
    def file_size(self) -> int: ...
    @property
    def fileno(self) -> int | None:
        """The descriptor of the file the reader parsed (None on Windows), valid while it lives."""
    @property
    def storages(self) -> list[tuple[str, str, int, int]]:
        """``[(key, dtype, start, end)]``: each storage's byte range in the file."""
    @property
    def tensors(self) -> list[tuple[str, str, list[int], list[int], int, int, bool, bool]]:
        """``[(name, dtype, shape, stride, storage, storage_offset, requires_grad, is_parameter)]``."""
    def convert(self, jobs: list[tuple[int, int, str, Any]]) -> None:
        """Fill contiguous CPU tensors from ``(src_start, src_end, src_dtype, destination)``."""
    def convert_into(self, destination: Any, jobs: list[tuple[int, int, str, int, str]]) -> Conversion:
        """Start filling ``destination`` (a contiguous CPU uint8 tensor) from ``(src_start, src_end,
        src_dtype, dst_offset, dst_dtype)`` jobs on threads of its own; returns at once."""
    def write_into(
        self,
        dest: str | os.PathLike[str],
        data_start: int,
        pieces: list[tuple[int, int, str, list[int] | None]],
    ) -> None:
        """Write ``(tensor index, byte offset into the data section, dtype, permutation)`` pieces
        of this checkpoint into the existing file ``dest`` (row-major, converted, in parallel)."""
    def elements(self, storage: int) -> bytearray:
        """The elements of a deflated or byte-swapped ``.npz`` member (a storage whose range lies past
        the file's end), inflated, in this machine's byte order."""

@final
class Conversion:
    """A conversion running on its own threads (``CheckpointReader.convert_into``)."""

    def wait(self) -> None:
        """Wait for it to end (GIL released) and raise its error; later calls return at once."""
    @property
    def done(self) -> bool:
        """Whether its threads have ended."""

# --- image ---

def resize_crop(
    pixels: bytes | object, width: int, height: int, mode: str, n_px: int, simd: bool = True
) -> bytes:
    """Resize (Pillow-exact bicubic) + centre-crop one image in its own mode; packed n x n bytes.

    ``pixels`` is packed bytes (``Image.tobytes()`` layout) or the capsule of ``Image.getim()``.
    """

def preprocess_into(
    items: list[tuple[bytes | object, int, int, str]],
    n_px: int,
    lut: bytes,
    out_addr: int,
    out_len: int,
    kind: str,
    threads: int = 1,
    simd: bool = True,
    max_pixels: int | None = None,
    mean_std: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None,
) -> list[str | None]:
    """Resize, crop, convert and normalise ``items`` (L, LA, RGB, RGBA; mode "png": 8-bit PNG
    bytes decoded in Rust; "jpeg" / "jpeg-fast": JPEG bytes decoded with Pillow's libjpeg, see
    ``use_pillow_libjpeg``) into the tensor at ``out_addr``; one error message (or
    None) per item. With ``mean_std`` and float32 output, the values are computed as
    ``(x / 255 - mean) / std`` in float32 (SIMD) wherever that reproduces ``lut`` exactly."""

def simd_level() -> str:
    """ "avx2+avxvnni", "avx2+avx512vnni", "avx2" or "none": the SIMD paths this CPU runs
    (``CLIPFAST_SIMD=avx2`` keeps to plain AVX2)."""

def set_pillow_vertical_first(enabled: bool) -> None:
    """Resize tall images in the pass order of Pillow >= 13 (True, the default) or of older Pillow
    (horizontal pass first); ``clipfast.transforms`` sets it from the installed Pillow."""

def use_pillow_libjpeg(path: str) -> str | None:
    """Decode JPEGs (item modes "jpeg" and "jpeg-fast") with the libjpeg that ``path`` (Pillow's
    ``_imaging`` extension) was linked with. None when in use, else why not."""

# --- text ---

@final
class ClipTokenizer:
    def __new__(
        cls, merges: str, ftfy_version: str | None = None, unicode_version: str | None = None
    ) -> ClipTokenizer: ...
    @property
    def extended_fast_path(self) -> bool: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def start_of_text(self) -> int: ...
    @property
    def end_of_text(self) -> int: ...
    def symbols(self) -> list[str]: ...
    def encode_batch(
        self, texts: list[str], clean: Callable[[str], str], context_length: int, truncate: bool
    ) -> tuple[bytearray, int | None]: ...
    def encode(self, text: str, clean: Callable[[str], str]) -> list[int]: ...

def clip_pretokenize(text: str) -> list[str]: ...
def clip_fast_clean(text: str, extended: bool = False) -> str | None: ...
def clip_fast_path_versions() -> tuple[str, str]: ...
def clip_pretokenizer_classes() -> tuple[
    str, list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]
]:
    """The regex version the generated classes were read from, and their ranges (letter, number, other)."""

def clip_set_pretokenizer_classes(
    letter: list[tuple[int, int]], number: list[tuple[int, int]], other: list[tuple[int, int]]
) -> bool:
    """Pre-tokenize with these classes (from the installed regex) from now on; False if already set."""

def clip_pretokenizer_classes_replaced() -> bool: ...
