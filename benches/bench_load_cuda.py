"""Load onto a GPU: ``clipfast.load(path, device="cuda")`` vs ``clip.load(path, device="cuda", jit=False)``,
and against the floor of moving the file's bytes once from the page cache into pinned memory and on
to the device.

Full-size checkpoints in OpenAI's exact TorchScript format (random weights) are written to
benches/.cache/cuda/. Every load runs in a fresh process; the CUDA context is created before the
clock starts and the clock stops after ``torch.cuda.synchronize()``. After timing, both models are
loaded once more in this process and their state dicts must be equal (names, dtypes, shapes, values).

The floor (a fresh process too, CUDA initialised before the clock): allocate a pinned buffer the
size of the file, ``readinto`` it from the page cache, copy it to the device, synchronise. No load
can move less: clipfast's must also parse, convert to fp16 where the file is not, and build the
model. Floor and clipfast.load run back to back in each round; the ratio is per round (target
<= 1.5x).

Needs a CUDA GPU and the reference package (clip-anytorch). Without a GPU this script says so and
leaves the last table (benches/results/load_cuda.md) as it is: the machines that build clipfast
have none, so that table comes from a GPU lent for a session, and names it.

    python benches/bench_load_cuda.py [--quick] [--repeats N] [--models ViT-B/32,RN50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benches" / ".cache" / "cuda"
RESULTS = ROOT / "benches" / "results"
MODELS = ["ViT-B/32", "RN50", "ViT-L/14"]
FLOOR_TARGET = 1.5

# Runs in a fresh interpreter: argv = method, checkpoint path. Prints {"s": seconds}.
CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.zeros(1, device="cuda"); torch.cuda.synchronize()  # the CUDA context is not the load's cost
method, path = sys.argv[1], sys.argv[2]
if method == "clipfast":
    import clipfast as lib
else:
    import clip as lib
t0 = time.perf_counter()
model, _ = lib.load(path, device="cuda", jit=False)
torch.cuda.synchronize()
print(json.dumps({"s": time.perf_counter() - t0}))
"""

# The floor, in a fresh interpreter: argv = checkpoint path, device. Prints {"s": seconds}. With a
# device other than CUDA (a smoke test of this script where there is no GPU) the buffer is not pinned.
FLOOR_CHILD = r"""
import json, os, sys, time
import torch
path, device = sys.argv[1], torch.device(sys.argv[2])
cuda = device.type == "cuda"
if cuda:
    torch.zeros(1, device=device); torch.cuda.synchronize()
t0 = time.perf_counter()
size = os.path.getsize(path)
host = torch.empty(size, dtype=torch.uint8, pin_memory=cuda)
view = memoryview(host.numpy())
with open(path, "rb", buffering=0) as f:
    done = 0
    while done < size:
        n = f.readinto(view[done:])
        if not n:
            raise SystemExit(f"{path}: the file ended after {done} of {size} bytes")
        done += n
on_device = host.to(device, non_blocking=cuda, copy=True)
if cuda:
    torch.cuda.synchronize()
print(json.dumps({"s": time.perf_counter() - t0, "bytes": int(on_device.numel())}))
"""


def checkpoint(name: str) -> Path:
    from clipfast import _testing

    path = CACHE / (name.replace("/", "-").replace("@", "-") + ".pt")
    if not path.is_file():
        _testing.write_openai_archive(path, _testing.spec(name))
    return path


def _seconds(code: str, *args: str) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["s"])


def time_load(method: str, path: Path, repeats: int) -> list[float]:
    return [_seconds(CHILD, method, str(path)) for _ in range(repeats)]


def time_against_floor(path: Path, repeats: int, device: str = "cuda") -> tuple[list[float], list[float]]:
    """(floor times, clipfast times), interleaved: each round runs the floor, then the load."""
    floors, loads = [], []
    for _ in range(repeats):
        floors.append(_seconds(FLOOR_CHILD, str(path), device))
        loads.append(_seconds(CHILD, "clipfast", str(path)))
    return floors, loads


def assert_same_state(path: Path) -> None:
    import clip
    import clipfast
    import torch

    ours, _ = clipfast.load(str(path), device="cuda")
    reference, _ = clip.load(str(path), device="cuda", jit=False)
    a, b = ours.state_dict(), reference.state_dict()
    assert list(a) == list(b), "parameter names or order differ"
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def markdown(rows: list[dict[str, Any]], where: str) -> str:
    lines = [
        f"Load of a full-size OpenAI checkpoint onto the GPU (fp16 as clip), median of fresh processes. "
        f"Machine: {where}.",
        "",
        "| model | clip.load | floor: page cache -> pinned -> GPU | **clipfast.load** | vs clip.load | "
        "vs floor (range), target <= 1.5x | runs | state dicts equal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ratios = row["floor_ratios"]
        ratio = statistics.median(ratios)
        met = "" if ratio <= FLOOR_TARGET else " NOT met"
        lines.append(
            f"| {row['case']} | {row['reference_s']:.3f} s | {row['floor_s']:.3f} s | "
            f"**{row['clipfast_s']:.3f} s** | {row['reference_s'] / row['clipfast_s']:.1f}x | "
            f"{ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}){met} | {row['runs']} | yes |"
        )
    lines += [
        "",
        "The floor reads the whole file into pinned memory and copies it to the device once, in a fresh "
        "process with CUDA initialised before the clock; it and clipfast.load run back to back in each "
        "round, and the ratio is taken per round.",
    ]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict[str, Any]], where: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load_cuda.md").write_text(markdown(rows, where))
    (RESULTS / "load_cuda.json").write_text(json.dumps({"machine": where, "rows": rows}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="ViT-B/32 only, 3 runs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_load_cuda: no CUDA GPU here; benches/results/load_cuda.md keeps its last table")
        return 0
    from _machine import machine

    models = ["ViT-B/32"] if args.quick else args.models.split(",")
    repeats = 3 if args.quick else args.repeats
    rows = []
    for name in models:
        path = checkpoint(name)
        floors, ours = time_against_floor(path, repeats)
        reference = time_load("clip", path, repeats)
        assert_same_state(path)
        row = {
            "case": name,
            "reference_s": statistics.median(reference),
            "floor_s": statistics.median(floors),
            "clipfast_s": statistics.median(ours),
            "floor_ratios": [load / floor for load, floor in zip(ours, floors)],
            "runs": repeats,
        }
        print(f"{name}: clip {reference} floor {floors} clipfast {ours}", flush=True)
        rows.append(row)
    write_results(rows, f"{machine()}, {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
