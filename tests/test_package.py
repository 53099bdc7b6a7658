"""The package itself: it imports fast, without torchvision or network, and its surface is explicit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import clipfast

ROOT = Path(__file__).resolve().parent.parent


def _section(text: str, name: str) -> str:
    """The body of one TOML table (up to the next table header)."""
    return ("\n" + text).split(f"\n[{name}]\n", 1)[1].split("\n[", 1)[0]


def cargo_version() -> str:
    """The version in Cargo.toml's [package] table: the one source of the package's version."""
    match = re.search(
        r'^version\s*=\s*"([^"]+)"', _section((ROOT / "Cargo.toml").read_text(), "package"), re.M
    )
    assert match, "Cargo.toml has no [package] version"
    return match.group(1)


def test_public_surface_is_explicit() -> None:
    for name in clipfast.__all__:
        assert hasattr(clipfast, name), name


def test_available_models_in_clip_order() -> None:
    import clip  # the reference

    assert clipfast.available_models() == clip.available_models()


def test_import_does_not_pull_torchvision_or_network() -> None:
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise AssertionError('network used at import')\n"
        "socket.socket.connect = refuse\n"
        "import clipfast\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "clipfast.clip._transform(224), clipfast.simple_tokenizer\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported by clipfast.clip'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_subclass_standard_exceptions() -> None:
    assert issubclass(clipfast.CheckpointError, ValueError)
    assert issubclass(clipfast.UnsafeCheckpointError, clipfast.CheckpointError)
    assert issubclass(clipfast.ArchitectureError, ValueError)
    assert issubclass(clipfast.UnsupportedDtypeError, ValueError)
    assert issubclass(clipfast.ChecksumError, RuntimeError)
    assert issubclass(clipfast.ModelNotFoundError, FileNotFoundError)
    assert issubclass(clipfast.ModelNotFoundError, RuntimeError)


def test_every_missing_dependency_error_names_the_package() -> None:
    # ImportError.name says which module is missing (the hub's raise once left it None).
    import ast

    raises = []
    for path in sorted((ROOT / "python" / "clipfast").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MissingDependencyError":
                names = [k.value for k in node.keywords if k.arg == "name"]
                raises.append((path.name, node.lineno, [getattr(n, "value", None) for n in names]))
    assert raises, "no MissingDependencyError raised anywhere?"
    unnamed = [(file, line) for file, line, names in raises if not (names and isinstance(names[0], str))]
    assert unnamed == [], f"MissingDependencyError without name='<package>': {unnamed}"


def test_version_has_one_source() -> None:
    # pyproject.toml takes the version from Cargo.toml (maturin's dynamic version), so the two cannot
    # disagree; the extension compiles the same string in as clipfast.__version__.
    project = _section((ROOT / "pyproject.toml").read_text(), "project")
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml must not repeat the version"
    assert re.search(r'^dynamic\s*=\s*\[[^]]*"version"', project, re.M)
    assert clipfast.__version__ == cargo_version()


def test_cli_version() -> None:
    result = subprocess.run([sys.executable, "-m", "clipfast", "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"clipfast {cargo_version()}\n"
