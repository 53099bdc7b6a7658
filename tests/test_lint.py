"""The typing contract: the hand-written stubs match the Rust module, and the package type-checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_native_stubs_match_the_extension() -> None:
    result = _run("mypy.stubtest", "clipfast._native")
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_type_checks() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_clean() -> None:
    result = _run("ruff", "check", "python", "tests", "benches", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr
