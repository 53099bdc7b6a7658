"""Memory bounds: no file makes clipfast allocate far more than its size (python/clipfast/limits.py,
and the heap checks of the Rust parsers in rust/fuzzing.rs).

Each case runs in a child process whose address space is limited (RLIMIT_AS) to what it had after
``import torch`` and ``import clipfast`` plus a fixed headroom: an allocation the bounds should
have prevented shows up there as a MemoryError (or a crash), not as a machine out of memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import clipfast
import pytest
import torch
from clipfast import _testing

HEADROOM = 2 << 30  # address space beyond the child's size after its imports


def run_limited(code: str, timeout: float = 300) -> Any:
    """Runs ``code`` (which must print one JSON line last) under RLIMIT_AS = size after imports +
    HEADROOM; returns the parsed line."""
    package = str(Path(clipfast.__file__).parent.parent)
    script = "\n".join(
        [
            "import json, resource, sys, warnings; warnings.filterwarnings('ignore')",
            f"sys.path.insert(0, {package!r})",
            "import torch, clipfast, clipfast.load, clipfast.checkpoint",
            "status = open('/proc/self/status').read().splitlines()",
            "vm = next(int(line.split()[1]) for line in status if line.startswith('VmSize:')) * 1024",
            "hard = resource.getrlimit(resource.RLIMIT_AS)[1]",
            f"resource.setrlimit(resource.RLIMIT_AS, (vm + {HEADROOM}, hard))",
            textwrap.dedent(code),
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


LOAD_ALL = """
results = {}
for name, path in json.loads(PATHS).items():
    try:
        clipfast.load(path, device="cpu")
        results[name] = "ok"
    except Exception as err:
        results[name] = type(err).__name__ + ": " + str(err)[:1000]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A real tiny ViT state dict, and copies whose shapes declare far more than they hold."""
    folder = tmp_path_factory.mktemp("bombs")
    good = _testing.write_state_dict(folder / "good.pt", _testing.tiny("ViT-B/32"))
    sd = torch.load(good, weights_only=True)
    width = sd["positional_embedding"].shape[1]
    files = {"good": str(good)}
    # A context length of 200,000: the text attention mask alone would take 160 GB.
    mask = dict(sd, positional_embedding=sd["positional_embedding"][:1].expand(200_000, width))
    torch.save(mask, folder / "mask.pt")
    files["mask"] = str(folder / "mask.pt")
    # A vocabulary of 40 M rows viewed from one row (stride 0): 10 GB as float32.
    vocab = dict(sd, **{"token_embedding.weight": sd["token_embedding.weight"][:1].expand(40_000_000, width)})
    torch.save(vocab, folder / "vocab.pt")
    files["vocab"] = str(folder / "vocab.pt")
    # A 1 KB file declaring one 10 GB tensor.
    torch.save({"w": torch.zeros(1).expand(2_500_000_000)}, folder / "tiny.pt")
    files["tiny"] = str(folder / "tiny.pt")
    return files


def test_declared_shapes_beyond_the_file_are_refused_before_allocating(bombs: dict[str, str]) -> None:
    assert Path(bombs["tiny"]).stat().st_size < 2048
    results = run_limited(f"PATHS = {json.dumps(json.dumps(bombs))}\n{LOAD_ALL}")
    assert results["good"] == "ok", results["good"]
    for name in ("mask", "vocab"):
        assert results[name].startswith("CheckpointError: "), (name, results[name])
        assert bombs[name] in results[name] and "nothing was allocated" in results[name]
    # Not a CLIP model at all: the architecture is refused, nothing large is made.
    assert results["tiny"].startswith("ArchitectureError: "), results["tiny"]


def test_readers_of_a_10gb_declared_tensor_in_a_1kb_file_allocate_nothing(bombs: dict[str, str]) -> None:
    results = run_limited(
        f"""
        from clipfast.checkpoint import read_state_dict, inspect_checkpoint
        path = {bombs["tiny"]!r}
        info = inspect_checkpoint(path)
        sd = read_state_dict(path, mmap=False)
        half = read_state_dict(path, dtype=torch.float16)
        w = sd["w"]
        print(json.dumps([info.tensor_count, list(w.shape), w.stride(), half["w"].dtype == torch.float16]))
        """
    )
    assert results == [1, [2_500_000_000], [0], True]


def test_the_limit_is_what_the_child_runs_under() -> None:
    """The harness itself: allocating HEADROOM more fails in the child (so a missing bound fails
    the tests above instead of exhausting the machine)."""
    results = run_limited(
        f"""
        try:
            torch.empty({HEADROOM} // 4 + (1 << 28), dtype=torch.float32)
            print(json.dumps("allocated"))
        except (MemoryError, RuntimeError) as err:
            print(json.dumps(type(err).__name__))
        """
    )
    assert results in ("MemoryError", "RuntimeError")


def test_budget_numbers() -> None:
    from clipfast import limits

    assert limits.budget(100 << 20) == 8 * (100 << 20) + (64 << 20)
