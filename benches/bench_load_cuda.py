"""Load onto a GPU: ``clipfast.load(path, device="cuda")`` vs ``clip.load(path, device="cuda", jit=False)``.

Full-size checkpoints in OpenAI's exact TorchScript format (random weights) are written to
benches/.cache/cuda/. Every load runs in a fresh process; the CUDA context is created before the
clock starts and the clock stops after ``torch.cuda.synchronize()``. After timing, both models are
loaded once more in this process and their state dicts must be equal (names, dtypes, shapes, values).

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


def checkpoint(name: str) -> Path:
    from clipfast import _testing

    path = CACHE / (name.replace("/", "-").replace("@", "-") + ".pt")
    if not path.is_file():
        _testing.write_openai_archive(path, _testing.spec(name))
    return path


def time_load(method: str, path: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, method, str(path)], capture_output=True, text=True, check=True
        )
        times.append(float(json.loads(out.stdout.strip().splitlines()[-1])["s"]))
    return times


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
        "| model | clip.load | **clipfast.load** | speed-up | runs | state dicts equal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['reference_s']:.3f} s | **{row['clipfast_s']:.3f} s** | "
            f"{row['reference_s'] / row['clipfast_s']:.1f}x | {row['runs']} | yes |"
        )
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
        ours = time_load("clipfast", path, repeats)
        reference = time_load("clip", path, repeats)
        assert_same_state(path)
        row = {
            "case": name,
            "reference_s": statistics.median(reference),
            "clipfast_s": statistics.median(ours),
            "runs": repeats,
        }
        print(f"{name}: clip {reference} clipfast {ours}", flush=True)
        rows.append(row)
    write_results(rows, f"{machine()}, {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
