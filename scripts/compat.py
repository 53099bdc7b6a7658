"""``make compat``: the compat subset of the tests on the oldest and the newest supported combination
of Python, torch, Pillow and numpy (.ci/compat/oldest.txt, .ci/compat/newest.txt).

Each combination gets its own virtual environment under ``$CLIPFAST_COMPAT_DIR`` (default
``~/.cache/clipfast-compat``; several GB each: torch's wheels), made once and reinstalled when its
requirements file changes. The tests import the package from ``python/`` with the extension built
by ``make build-dev``, which is the wheel's own abi3 binary, so each Python runs what the wheel ships.

The oldest environment must hold exactly the floors pyproject.toml declares (checked here): a floor
that fails its tests is raised in pyproject.toml and in oldest.txt together.

usage: compat.py [oldest|newest ...] [-- PYTEST ARGS]
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / ".ci" / "compat"

# name -> (Python version, requirements file)
COMBINATIONS = {"oldest": ("3.9", COMPAT / "oldest.txt"), "newest": ("3.13", COMPAT / "newest.txt")}

# Loading (OpenAI archives, state dicts, safetensors, the checkpoint reader), jit, preprocessing with
# the Rust JPEG and PNG paths, tokenize, downloads and the cache, the CLI, the drop-in surface. Not
# here: open_clip / Hugging Face / embedding tests (their references, open_clip_torch and
# transformers, set their own floors), lint and the wheel test (the development environment's).
TESTS = [
    "tests/test_arch.py",
    "tests/test_checkpoint.py",
    "tests/test_load.py",
    "tests/test_jit.py",
    "tests/test_openai_format.py",
    "tests/test_transforms.py",
    "tests/test_jpeg.py",
    "tests/test_tokenize.py",
    "tests/test_download.py",
    "tests/test_cli.py",
    "tests/test_dropin.py",
    "tests/test_package.py",
]

# Printed as one tab-separated line: Python, torch, numpy, Pillow, ftfy, whether JPEGs take the Rust path.
VERSIONS = (
    "import sys, torch, numpy, PIL, ftfy; from clipfast import transforms; "
    "print(sys.version.split()[0], torch.__version__, numpy.__version__, PIL.__version__, ftfy.__version__, "
    "'yes' if transforms._jpeg_in_rust() else 'no (Pillow decodes them)', sep='\\t')"
)
# Whether this torch runs fp16 convolutions on the CPU, which tracing a model the way OpenAI's archives
# were made needs (torch 2.1 cannot): where not, the tests' archives are written by this script's
# own Python (the development environment) through $CLIPFAST_ARCHIVE_PYTHON, as OpenAI's files were
# written by another torch than the one that reads them.
HALF_CONV = (
    "import torch; x = torch.ones(1, 1, 3, 3, dtype=torch.half); torch.nn.functional.conv2d(x, x, padding=1)"
)
COLUMNS = ("Python", "torch", "numpy", "Pillow", "ftfy", "JPEGs decoded in Rust")
README_MARKERS = ("<!-- compat:matrix -->", "<!-- /compat:matrix -->")


def _interpreter(version: str) -> str:
    """A Python ``version`` interpreter: pyenv's, else ``pythonX.Y`` on PATH."""
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = sorted(
        glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parent.parent.name)],
    )
    if found:
        return found[-1]
    on_path = shutil.which(f"python{version}")
    if on_path:
        return on_path
    sys.exit(f"compat: no Python {version} (install it with pyenv, or put python{version} on PATH)")


def _environment(name: str, version: str, requirements: Path, base: Path) -> Path:
    """The combination's virtual environment, created or reinstalled as needed; returns its python."""
    venv = base / f"py{version.replace('.', '')}-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    if not python.exists():
        subprocess.run([_interpreter(version), "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-r", str(requirements)], check=True)
    stamp.write_text(digest)
    return python


def _floors() -> dict[str, str]:
    """pyproject.toml's ``name>=version`` dependencies (not extras)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    assert block, "pyproject.toml has no dependencies list"
    return {m[0].lower(): m[1] for m in re.findall(r'"([A-Za-z0-9_.-]+)\s*>=\s*([^",;\s]+)"', block.group(1))}


def _check_floors(python: Path) -> list[str]:
    """Where the oldest environment does not hold exactly the declared floor."""
    problems = []
    for name, floor in _floors().items():
        code = f"import importlib.metadata as m; print(m.version({name!r}))"
        result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
        installed = result.stdout.strip()
        if result.returncode != 0:
            problems.append(f"{name} is not installed (floor {floor})")
        elif installed.split("+")[0] not in (floor, f"{floor}.0", f"{floor}.0.0"):
            problems.append(f"{name} {installed} installed, but the declared floor is {floor}")
    return problems


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    names = argv or list(COMBINATIONS)
    base = Path(os.environ.get("CLIPFAST_COMPAT_DIR") or Path.home() / ".cache" / "clipfast-compat")
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    env.pop("CLIPFAST_WHEEL", None)
    env.pop("VIRTUAL_ENV", None)
    results = []
    for name in names:
        version, requirements = COMBINATIONS[name]
        python = _environment(name, version, requirements, base)
        probe = subprocess.run([str(python), "-c", VERSIONS], env=env, capture_output=True, text=True)
        versions = probe.stdout.strip().split("\t")
        if probe.returncode != 0 or len(versions) != len(COLUMNS):
            print(probe.stderr, file=sys.stderr)
            versions = ["?"] * len(COLUMNS)
        print(f"\n== {name}: " + ", ".join(f"{c} {v}" for c, v in zip(COLUMNS, versions)), flush=True)
        run_env = {**env, "CLIPFAST_COMPAT": "1"}  # tests skip checks of the development environment
        if subprocess.run([str(python), "-c", HALF_CONV], capture_output=True).returncode != 0:
            run_env["CLIPFAST_ARCHIVE_PYTHON"] = sys.executable
            print(
                "compat: this torch has no fp16 convolution on the CPU: archives are written by",
                sys.executable,
            )
        problems = _check_floors(python) if name == "oldest" else []
        for problem in problems:
            print(f"compat: {problem}", file=sys.stderr)
        start = time.monotonic()
        status = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *extra],
            cwd=ROOT,
            env=run_env,
        ).returncode
        ok = status == 0 and not problems
        results.append((name, versions, ok, time.monotonic() - start))
    print("\ncompat summary:")
    for name, versions, ok, seconds in results:
        print(f"  {name:<7} {'passed' if ok else 'FAILED'}  {', '.join(versions)}  ({seconds / 60:.1f} min)")
    _write_readme(results)
    return 0 if all(result[2] for result in results) else 1


def _write_readme(results: list[tuple[str, list[str], bool, float]]) -> None:
    """The tested matrix in the README between its markers: a row per combination run now (with
    today's date), the rows of combinations not run this time kept as they were."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    table, tail = rest.split(end, 1)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    rows.pop("combination", None)
    today = time.strftime("%Y-%m-%d")
    for name, versions, ok, _ in results:
        cells = [name, *versions, "passed" if ok else "FAILED", today]
        rows[name] = "| " + " | ".join(cells) + " |"
    header = "| combination | " + " | ".join(COLUMNS) + " | compat subset | tested |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    lines += [rows[name] for name in COMBINATIONS if name in rows]
    readme.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
