"""Shared fixtures: checkpoints in OpenAI's published formats, generated once per test session."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from clipfast import _testing

# The reference packages warn on import (pkg_resources, TorchScript deprecation); not our concern.
warnings.filterwarnings("ignore", category=UserWarning, module=r"clip\..*")

ALL_MODELS = list(_testing.FULL)


def _file_name(name: str) -> str:
    return name.replace("/", "-").replace("@", "-")


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def openai_archive(checkpoint_dir: Path) -> Callable[[str], Path]:
    """name -> path of a TorchScript archive made as OpenAI's are, tiny widths, same structure."""
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            path = checkpoint_dir / f"jit-{_file_name(name)}.pt"
            cache[name] = _testing.write_openai_archive(path, _testing.tiny(name))
        return cache[name]

    return make


@pytest.fixture(scope="session")
def state_dict_file(checkpoint_dir: Path) -> Callable[[str], Path]:
    """name -> path of ``torch.save(state_dict)`` of the same tiny fp16 model as ``openai_archive``."""
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            path = checkpoint_dir / f"sd-{_file_name(name)}.pt"
            cache[name] = _testing.write_state_dict(path, _testing.tiny(name))
        return cache[name]

    return make
