# Hand-written stubs for the Rust extension module `clipfast._native`.
# Every function the Rust side exports is declared here; `make lint` checks them with mypy's stubtest.

__version__: str

# --- reader ---
import os

class CheckpointReader:
    """A checkpoint mapped and parsed (torch.save zip, TorchScript archive, safetensors)."""

    def __new__(cls, path: str | os.PathLike[str]) -> CheckpointReader: ...
    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def file_size(self) -> int: ...
    @property
    def storages(self) -> list[tuple[str, str, int, int]]:
        """``[(key, dtype, start, end)]``: each storage's byte range in the file."""
    @property
    def tensors(self) -> list[tuple[str, str, list[int], list[int], int, int, bool, bool]]:
        """``[(name, dtype, shape, stride, storage, storage_offset, requires_grad, is_parameter)]``."""
    def convert(self, jobs: list[tuple[int, int, str, int, int, str]]) -> None:
        """Private: fill buffers ``(src_start, src_end, src_dtype, dst_address, dst_nbytes, dst_dtype)``."""

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
) -> list[str | None]:
    """Resize, crop, convert and normalise ``items`` (L, LA, RGB, RGBA) into the tensor at ``out_addr``."""

def simd_level() -> str:
    """"avx2", "sse4.1" or "none": the SIMD paths this CPU runs."""

# --- text ---
from collections.abc import Callable  # noqa: E402  (sections are appended per area)
from typing import final  # noqa: E402

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
