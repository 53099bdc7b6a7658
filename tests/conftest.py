"""Shared fixtures: checkpoints in OpenAI's published formats, generated once per test session."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import clipfast
import pytest
from clipfast import _testing
from http_fault_server import FaultServer

# The reference packages warn on import (pkg_resources, TorchScript deprecation); not our concern.
warnings.filterwarnings("ignore", category=UserWarning, module=r"clip\..*")

ALL_MODELS = list(_testing.FULL)


def fp16_convolution_on_cpu() -> bool:
    """Whether this torch runs fp16 convolutions on the CPU. torch 2.1 (make compat's oldest) does
    not: OpenAI's format is a trace run in fp16, which can then neither be written nor run on the
    CPU as traced."""
    import torch

    x = torch.ones(1, 1, 3, 3, dtype=torch.half)
    try:
        torch.nn.functional.conv2d(x, x, padding=1)
    except RuntimeError:
        return False
    return True


def _file_name(name: str) -> str:
    return name.replace("/", "-").replace("@", "-")


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def _cached_writer(
    directory: Path, prefix: str, write: Callable[[Path, _testing.ModelSpec], Path]
) -> Callable[[str], Path]:
    """name -> path of a tiny checkpoint written once by ``write`` into ``directory``."""
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            cache[name] = write(directory / f"{prefix}-{_file_name(name)}.pt", _testing.tiny(name))
        return cache[name]

    return make


@pytest.fixture(scope="session")
def openai_archive(checkpoint_dir: Path) -> Callable[[str], Path]:
    """name -> path of a TorchScript archive made as OpenAI's are, tiny widths, same structure."""
    return _cached_writer(checkpoint_dir, "jit", _testing.write_openai_archive)


@pytest.fixture(scope="session")
def state_dict_file(checkpoint_dir: Path) -> Callable[[str], Path]:
    """name -> path of ``torch.save(state_dict)`` of the same tiny fp16 model as ``openai_archive``."""
    return _cached_writer(checkpoint_dir, "sd", _testing.write_state_dict)


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def local_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, read_timeout: str = "2") -> None:
    """Downloads from the local fault server only: short timeouts and back-off, no proxy from the
    environment, no offline mode or mirror, verified-cache fallback records under ``tmp_path``."""
    monkeypatch.setenv("CLIPFAST_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("CLIPFAST_READ_TIMEOUT", read_timeout)
    monkeypatch.setenv("CLIPFAST_RETRIES", "2")
    monkeypatch.setenv("CLIPFAST_BACKOFF", "0.01")
    for var in ("CLIPFAST_OFFLINE", "CLIPFAST_MIRROR", "CLIPFAST_MIN_RATE", *PROXY_VARIABLES):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A fault-injecting HTTP server on 127.0.0.1, stopped after the test."""
    s = FaultServer()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def fork_after() -> Callable[..., None]:
    """(parent, child, timeout) -> runs ``parent`` in a fresh interpreter, forks, runs ``child`` in
    the child, which must set ``ok``; fails unless the child exits within ``timeout`` with ok true.
    Each snippet sees ``os``, ``sys`` and the clipfast under test on ``sys.path``."""

    def run(parent: str, child: str, timeout: float = 120) -> None:
        package = str(Path(clipfast.__file__).parent.parent)
        code = "\n".join(
            [
                "import os, sys, warnings; warnings.filterwarnings('ignore')",
                f"sys.path.insert(0, {package!r})",
                textwrap.dedent(parent),
                "pid = os.fork()",
                "if pid == 0:",
                textwrap.indent(textwrap.dedent(child), "    "),
                "    os._exit(0 if ok else 3)",
                "_, status = os.waitpid(pid, 0)",
                "sys.exit(os.waitstatus_to_exitcode(status))",
            ]
        )
        result = subprocess.run([sys.executable, "-c", code], timeout=timeout, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    return run


@pytest.fixture
def conversion_held_back(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``clipfast.load`` gives the model its tensors while their values are still being converted,
    and waits (``ready()``) before any step that reads values. Here the conversion only starts when
    waited for, so the tensors hold unfilled memory until then: a step that reads values without
    waiting reads zeros, and comparing with the reference fails. Returns how many conversions were
    held back (a test checks its load went this way)."""
    from clipfast import checkpoint

    held: list[Any] = []
    count = [0]
    real_start, real_wait = checkpoint._PendingRead.start, checkpoint._PendingRead.wait

    def start(self: Any) -> None:
        if self.jobs:
            count[0] += 1
        held.append(self)

    def wait(self: Any) -> None:
        if any(p is self for p in held):
            held.remove(self)
            real_start(self)
        real_wait(self)

    monkeypatch.setattr(checkpoint._PendingRead, "start", start)
    monkeypatch.setattr(checkpoint._PendingRead, "wait", wait)
    return count
