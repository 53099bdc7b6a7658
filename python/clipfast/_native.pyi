# Hand-written stubs for the Rust extension module `clipfast._native`.
# Every function the Rust side exports is declared here; `make lint` checks them with mypy's stubtest.

__version__: str

# --- reader ---
import os
import pathlib
from typing import Any, final

@final
class CheckpointReader:
    """A checkpoint mapped and parsed (torch.save zip, TorchScript archive, safetensors)."""

    def __new__(cls, path: str | os.PathLike[str]) -> CheckpointReader: ...
    @property
    def path(self) -> pathlib.Path: ...
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
    def convert(self, jobs: list[tuple[int, int, str, Any]]) -> None:
        """Fill contiguous CPU tensors from ``(src_start, src_end, src_dtype, destination)``."""
