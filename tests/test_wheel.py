"""The wheel users install, checked from outside: its tags and contents, and that it works in a fresh
environment with no Rust toolchain and no source tree.

``make test`` builds the wheel once (the in-place extension the other tests import is copied out of
it) and names it in ``CLIPFAST_WHEEL``; ``make dist`` also names the sdist in ``CLIPFAST_SDIST``,
which adds the slow check that the sdist builds. Without ``CLIPFAST_WHEEL`` these tests are skipped.

The fresh environment gets clipfast's declared dependencies (torch, numpy, Pillow, ...) from the
development environment through a ``.pth`` file, not by downloading them again: exactly the
distributions those requirements pull in, followed through their metadata, so an undeclared
dependency (torchvision, clip-anytorch, pyarrow, ...) is missing there as it would be for a user.
"""

from __future__ import annotations

import email.parser
import fnmatch
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from test_package import ROOT, cargo_version

WHEEL = os.environ.get("CLIPFAST_WHEEL") or ""
SDIST = os.path.abspath(os.environ["CLIPFAST_SDIST"]) if os.environ.get("CLIPFAST_SDIST") else ""
pytestmark = pytest.mark.skipif(
    not WHEEL, reason="CLIPFAST_WHEEL names the wheel to check (make test, make dist)"
)

IMAGES = Path(__file__).parent / "images"
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")


def _wheel_names() -> set[str]:
    with zipfile.ZipFile(WHEEL) as wheel:
        return set(wheel.namelist())


def _wheel_text(name: str) -> str:
    with zipfile.ZipFile(WHEEL) as wheel:
        return wheel.read(name).decode()


def _dist_info() -> str:
    return f"clipfast-{cargo_version()}.dist-info"


def _tracked(pathspec: str) -> list[str] | None:
    """Files git tracks under ``pathspec`` (relative to the repository), None outside a git checkout."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "ls-files", "-z", pathspec], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return [name for name in result.stdout.split("\0") if name]


# --- what the wheel is -----------------------------------------------------------------------


def test_tags_and_manylinux_policy() -> None:
    name = Path(WHEEL).name
    distribution, version, python_tag, abi_tag, platforms = name[: -len(".whl")].split("-")
    assert (distribution, version) == ("clipfast", cargo_version())
    assert (python_tag, abi_tag) == ("cp39", "abi3"), "one wheel for every CPython >= 3.9"
    wheel = email.parser.Parser().parsestr(_wheel_text(f"{_dist_info()}/WHEEL"))
    assert wheel["Root-Is-Purelib"] == "false"
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        assert "manylinux_2_17_x86_64" in platforms.split(".")
        assert "cp39-abi3-manylinux_2_17_x86_64" in wheel.get_all("Tag", [])
        # auditwheel reads the symbol versions the extension needs from glibc (and that it links no
        # other library): it must agree with the tag.
        result = subprocess.run(
            [sys.executable, "-m", "auditwheel", "show", WHEEL], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())
        assert 'is consistent with the following platform tag: "manylinux_2_17_x86_64"' in text, text


def test_metadata() -> None:
    meta = email.parser.Parser().parsestr(_wheel_text(f"{_dist_info()}/METADATA"))
    assert meta["Name"] == "clipfast" and meta["Version"] == cargo_version()
    assert meta["Requires-Python"] == ">=3.9"
    assert meta["License-Expression"] == "MIT"
    requires = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower() for r in meta.get_all("Requires-Dist", [])}
    assert {"torch", "numpy", "pillow", "ftfy", "regex", "tqdm"} <= requires
    assert "clip-anytorch" not in requires and "torchvision" not in requires
    entry_points = _wheel_text(f"{_dist_info()}/entry_points.txt")
    assert re.search(r"^clipfast\s*=\s*clipfast\.cli:main$", entry_points, re.M)


def test_contents() -> None:
    names = _wheel_names()
    info = _dist_info()
    # What must be there: the vocabulary and its licence notice, the typing contract, the licence.
    for needed in (
        "clipfast/bpe_simple_vocab_16e6.txt.gz",
        "clipfast/bpe_simple_vocab_16e6.LICENSE",
        "clipfast/py.typed",
        "clipfast/_native.pyi",
        "clipfast/__init__.py",
        "clipfast/cli.py",
        "clipfast/demo.py",
        "clipfast/_openai_format.py",
        f"{info}/licenses/LICENSE",
    ):
        assert needed in names, needed
    # What must not: tests, fixtures, test support that needs openai/CLIP, build leftovers.
    extensions = [n for n in names if n.endswith((".so", ".pyd", ".dylib"))]
    assert extensions == ["clipfast/_native.abi3.so"] or extensions == ["clipfast/_native.pyd"]
    for name in names:
        assert name.startswith(("clipfast/", f"{info}/")), name
        assert not name.startswith(("clipfast/tests/", "tests/")), name
        assert "__pycache__" not in name and not name.endswith((".pyc", ".pt", ".partial")), name
        assert not Path(name).name.startswith("."), name  # .native-stamp and the like
    assert "clipfast/_testing.py" not in names
    # Exactly the package as committed (less _testing.py), the extension and the metadata: a stray
    # file in the working tree shows here.
    tracked = _tracked("python/clipfast")
    if tracked is not None:
        package = {"clipfast/" + n[len("python/clipfast/") :] for n in tracked} - {"clipfast/_testing.py"}
        assert {n for n in names if n.startswith("clipfast/")} == package | set(extensions)
    assert {n for n in names if n.startswith(info)} == {
        f"{info}/{n}"
        for n in (
            "METADATA",
            "WHEEL",
            "RECORD",
            "entry_points.txt",
            "licenses/LICENSE",
            # maturin's CycloneDX list of the Rust crates compiled into the extension (PEP 770):
            # what scanners need to know which versions of ring, rustls, png ... the wheel carries.
            "sboms/clipfast.cyclonedx.json",
        )
    }


def test_check_wheel_contents() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_wheel_contents", WHEEL], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the wheel installed where there is no Rust and no source tree ---------------------------


def _requirement_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` pull in (markers evaluated here, extras only
    where asked for), by canonical name; fails when one is missing or of the wrong version."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), frozenset({""})) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in extras
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        dist = metadata.distribution(requirement.name)
        assert requirement.specifier.contains(dist.version, prereleases=True), (requirement, dist.version)
        found[name] = dist
        wanted = frozenset({"", *requirement.extras})
        todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return found


def _top_level(dist: metadata.Distribution) -> Iterator[Path]:
    """The entries a distribution installed at the top of site-packages."""
    site = Path(str(dist.locate_file("")))
    for file in dist.files or []:
        parts = Path(str(file)).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".pth"):
            yield site / parts[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fresh virtual environment with the wheel installed and the declared dependencies reachable;
    returns its python, the environment variables to run it with, and a scratch folder."""
    base = tmp_path_factory.mktemp("wheel-env")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies, as links to the development environment's copies.
    meta = email.parser.Parser().parsestr(_wheel_text(f"{_dist_info()}/METADATA"))
    deps = base / "deps"
    deps.mkdir()
    for dist in _requirement_closure(meta.get_all("Requires-Dist", [])).values():
        for entry in _top_level(dist):
            link = deps / entry.name
            if not link.exists():
                link.symlink_to(entry)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "clipfast_test_dependencies.pth").write_text(f"{deps}\n")
    home = base / "home"
    home.mkdir()
    env = {
        "PATH": str(venv / "bin"),
        "HOME": str(home),
        "TMPDIR": str(base),
        "LANG": "C.UTF-8",
        "CLIPFAST_DEMO_DIR": str(base / "demo"),
        "CLIPFAST_OFFLINE": "1",
    }
    for tool in ("cargo", "rustc", "rustup", "maturin"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is on the test environment's PATH"
    # pip of the development environment installs into the new one (--python); --no-index: nothing
    # is downloaded, and the dependencies must already be satisfied by what the .pth file reaches.
    subprocess.run(
        [*PIP, "--python", str(python), "install", "--no-index", "--no-cache-dir", WHEEL],
        check=True,
        env={**env, "PATH": os.environ["PATH"]},
    )
    work = base / "work"  # outside the source tree: nothing there to import by accident
    work.mkdir()
    return {"python": str(python), "bin": venv / "bin", "env": env, "work": work}


def run(installed: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=installed["work"], env=installed["env"], capture_output=True, text=True, timeout=600
    )


def test_installed_version_and_list(installed: dict[str, Any]) -> None:
    clipfast_command = str(installed["bin"] / "clipfast")
    result = run(installed, clipfast_command, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"clipfast {cargo_version()}\n"
    result = run(installed, clipfast_command, "list")
    assert result.returncode == 0, result.stderr
    import clipfast

    for name in clipfast.available_models():
        assert re.search(rf"^{re.escape(name)}\s", result.stdout, re.M), (name, result.stdout)


def test_installed_package_is_the_wheel(installed: dict[str, Any]) -> None:
    code = """
        import importlib, importlib.metadata, importlib.resources, sys, sysconfig
        import clipfast
        site = sysconfig.get_path("purelib")
        assert clipfast.__file__.startswith(site), clipfast.__file__
        assert clipfast._native.__file__.startswith(site)
        assert importlib.metadata.version("clipfast") == clipfast.__version__
        for name in clipfast.__all__:  # every public name resolves with the declared dependencies alone
            getattr(clipfast, name)
        files = importlib.resources.files("clipfast")
        assert files.joinpath("bpe_simple_vocab_16e6.txt.gz").is_file()
        assert files.joinpath("py.typed").is_file()
        for absent in ("clip", "torchvision", "clipfast._testing"):
            try:
                importlib.import_module(absent)
            except ImportError:
                continue
            raise AssertionError(f"{absent} is importable in the wheel's environment")
        ids = clipfast.tokenize(["a photo of a cat"])
        assert ids.shape == (1, 77) and int(ids[0, 0]) == 49406
        print("ok")
    """
    result = run(installed, installed["python"], "-c", textwrap.dedent(code))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_installed_demo_without_clip(installed: dict[str, Any]) -> None:
    """The demo writes its checkpoint with clipfast's own writer, loads it, and (clip-anytorch not
    being installed) compares with the file as torch.jit.load reads and runs it."""
    result = run(installed, installed["python"], "-m", "clipfast.demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "openai/CLIP is not installed" in result.stdout
    assert re.search(r"^weights\s+identical to torch\.jit\.load's", result.stdout, re.M), result.stdout
    assert re.search(r"^outputs\s+match", result.stdout, re.M), result.stdout


def test_installed_preprocess_batch_decodes_jpeg_in_rust(installed: dict[str, Any]) -> None:
    import torch
    from clip.clip import _transform
    from PIL import Image

    image = installed["work"] / "astronaut.jpg"
    shutil.copyfile(IMAGES / "astronaut.jpg", image)
    expected = installed["work"] / "expected.pt"
    torch.save(_transform(224)(Image.open(image)), expected)  # openai/CLIP's pipeline, here
    code = f"""
        import torch
        import clipfast
        from clipfast import transforms
        path = {str(image)!r}
        data = open(path, "rb").read()
        expected = torch.load({str(expected)!r})
        assert transforms._jpeg_in_rust(), "the Rust JPEG path is off (no libjpeg, or not Pillow's pixels)"
        assert transforms._rust_mode(data, False) == "jpeg"
        def pillow_used(*args, **kwargs):
            raise AssertionError("a JPEG went to Pillow")
        transforms._pillow_item = pillow_used
        transforms._decode = pillow_used
        batch = clipfast.preprocess_batch([data, path, open(path, "rb")])
        assert batch.shape == (3, 3, 224, 224)
        for row in batch:
            assert torch.equal(row, expected)
        print("ok")
    """
    result = run(installed, installed["python"], "-c", textwrap.dedent(code))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


# --- the sdist (make dist only: it compiles the crate again) ----------------------------------

SDIST_EXCLUDED = ("benches/*", ".ci/*", ".git*")


@pytest.mark.skipif(not SDIST, reason="CLIPFAST_SDIST names the sdist to check (make dist)")
def test_sdist_contents_and_build(tmp_path: Path) -> None:
    prefix = f"clipfast-{cargo_version()}/"
    with tarfile.open(SDIST) as sdist:
        members = {m.name[len(prefix) :] for m in sdist.getmembers() if m.isfile()}
    for needed in ("pyproject.toml", "Cargo.toml", "Cargo.lock", "build.rs", "rust/lib.rs", "LICENSE"):
        assert needed in members, needed
    assert "python/clipfast/_testing.py" in members and "tests/conftest.py" in members  # the suite runs
    tracked = _tracked(".")
    if tracked is not None:
        shipped = {n for n in tracked if not any(fnmatch.fnmatch(n, p) for p in SDIST_EXCLUDED)}
        assert members - {"PKG-INFO"} == shipped, "the sdist must hold the committed sources, no stray files"
    # It builds with the plain toolchain (what pip does where no wheel fits), into the same package.
    out = tmp_path / "wheel"
    env = {**os.environ, "CARGO_TARGET_DIR": str(ROOT / "target" / "sdist-check")}
    env.pop("PYTHONPATH", None)
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), SDIST],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    (built,) = out.glob("*.whl")
    with zipfile.ZipFile(built) as wheel:
        assert set(wheel.namelist()) == _wheel_names()
        assert wheel.read(f"{_dist_info()}/METADATA") == _wheel_text(f"{_dist_info()}/METADATA").encode()
