"""Load time and peak memory: clipfast.load vs clip.load(jit=False) vs open_clip vs two floors.

Full-size ViT-B/32, RN50 and ViT-L/14 checkpoints in OpenAI's exact format (random weights) are written
once to benches/.cache/. Every load runs in a fresh process: ``import torch`` and the library's import
come first (their cost is reported on its own line), then only the load call is timed. Page cache warm.

- clipfast:       ``clipfast.load(path, device="cpu")``
- clip:           ``clip.load(path, device="cpu", jit=False)`` (openai/CLIP, the reference)
- open_clip:      ``open_clip.load_openai_model(path, device="cpu")`` (its loader of OpenAI's .pt files)
- naive floor:    ``torch.load(state_dict.pt, mmap=True)`` + a meta-device model +
                  ``load_state_dict(assign=True)`` + ``.float()``
- physical floor: allocate the fp32 weights and fill them from the file's (mapped, fp16) tensors with
                  torch's multi-threaded copy: what any CPU load must at least do

Peak RSS is ``ru_maxrss`` at the end, minus its value right after ``import torch``.

    python benches/bench_load.py [--quick] [--repeats N] [--models ViT-B/32,RN50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _machine import machine

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benches" / ".cache"
RESULTS = ROOT / "benches" / "results"
MODELS = ["ViT-B/32", "RN50", "ViT-L/14"]
METHODS = ["clipfast", "clip", "open_clip", "naive_floor", "physical_floor"]
LABELS = {
    "clipfast": "clipfast.load",
    "clip": "clip.load",
    "open_clip": "open_clip",
    "naive_floor": "naive floor",
    "physical_floor": "physical floor",
}
# Targets of issue 3 (CPU): speed-up over clip.load, distance to the physical floor, memory budget.
SPEEDUP_TARGET = {"ViT-B/32": 10.0, "RN50": 10.0, "ViT-L/14": 12.0}
FLOOR_TARGET = 1.2
RSS_FACTOR = 1.15
GIB = 2**30

# Runs in a fresh interpreter: argv = method, archive, state-dict file, spec (JSON).
CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

import torch
base = peak()
method, archive, state_file, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if isinstance(spec["vision_layers"], list):
    spec["vision_layers"] = tuple(spec["vision_layers"])

t0 = time.perf_counter()
if method == "clipfast":
    import clipfast
elif method == "clip":
    import clip
elif method == "open_clip":
    import open_clip
elif method == "naive_floor":
    import clip.model
elif method == "physical_floor":
    from clipfast.checkpoint import read_state_dict
import_s = time.perf_counter() - t0

if method == "physical_floor":  # not timed: map the file's tensors as stored (fp16 and fp32)
    source = read_state_dict(archive, mmap=True)
    source = [t for t in source.values() if t.is_floating_point()]

t0 = time.perf_counter()
if method == "clipfast":
    model, _ = clipfast.load(archive, device="cpu")
elif method == "clip":
    model, _ = clip.load(archive, device="cpu", jit=False)
elif method == "open_clip":
    model = open_clip.load_openai_model(archive, device="cpu")
elif method == "naive_floor":
    state = torch.load(state_file, mmap=True, weights_only=True, map_location="cpu")
    with torch.device("meta"):
        model = clip.model.CLIP(**spec)
    model.load_state_dict(state, assign=True)
    model.float()
elif method == "physical_floor":
    model = [torch.empty(t.shape, dtype=torch.float32).copy_(t) for t in source]
load_s = time.perf_counter() - t0
print(json.dumps({"load_s": load_s, "import_s": import_s, "base_rss": base, "peak_rss": peak()}))
"""


def file_name(name: str) -> str:
    return name.replace("/", "-").replace("@", "-")


def ensure_checkpoints(name: str) -> tuple[Path, Path]:
    """The full-size archive (OpenAI's format) and a torch.save state dict of the same weights."""
    archive = CACHE / f"{file_name(name)}.pt"
    state = CACHE / f"{file_name(name)}.state_dict.pt"
    for path, writer in ((archive, "write_openai_archive"), (state, "write_state_dict")):
        if path.is_file():
            continue
        print(f"writing {path} (once) ...", flush=True)
        partial = path.with_name(f".{path.name}.partial")
        code = (
            "import sys, warnings; warnings.filterwarnings('ignore'); from clipfast import _testing; "
            f"_testing.{writer}(sys.argv[1], _testing.spec(sys.argv[2]))"
        )
        subprocess.run([sys.executable, "-c", code, str(partial), name], check=True, env=child_env())
        os.replace(partial, path)
    return archive, state


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), env.get("PYTHONPATH")]))
    return env


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_once(method: str, archive: Path, state: Path, spec: dict[str, Any]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(archive), str(state), json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def fp32_weight_bytes(spec: dict[str, Any]) -> int:
    import clip.model
    import torch

    args = dict(spec)
    if isinstance(args["vision_layers"], list):
        args["vision_layers"] = tuple(args["vision_layers"])
    with torch.device("meta"):
        model = clip.model.CLIP(**args)
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())


def bench_model(name: str, repeats: int) -> dict[str, Any]:
    from clipfast import _testing

    spec = asdict(_testing.spec(name))
    archive, state = ensure_checkpoints(name)
    warm(archive)
    warm(state)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for r in range(repeats):
        for method in METHODS:  # interleaved, so that drifts in machine load hit every method alike
            runs[method].append(run_once(method, archive, state, spec))
        print(f"  {name}: repeat {r + 1}/{repeats} done", flush=True)

    def med(method: str, field: str) -> float:
        return statistics.median(run[field] for run in runs[method])

    weights = fp32_weight_bytes(spec)
    row: dict[str, Any] = {"case": name, "fp32_weights_gib": weights / GIB, "repeats": repeats}
    for method in METHODS:
        row[f"{method}_s"] = med(method, "load_s")
        row[f"{method}_import_s"] = med(method, "import_s")
        row[f"{method}_rss_gib"] = statistics.median(
            (run["peak_rss"] - run["base_rss"]) / GIB for run in runs[method]
        )
    row["reference_s"] = row["clip_s"]
    row["ratio"] = row["clip_s"] / row["clipfast_s"]
    row["vs_open_clip"] = row["open_clip_s"] / row["clipfast_s"]
    row["vs_physical_floor"] = row["clipfast_s"] / row["physical_floor_s"]
    row["vs_naive_floor"] = row["clipfast_s"] / row["naive_floor_s"]
    row["rss_budget_gib"] = RSS_FACTOR * weights / GIB
    row["targets"] = {
        "speedup": row["ratio"] >= SPEEDUP_TARGET.get(name, 10.0),
        "physical_floor": row["vs_physical_floor"] <= FLOOR_TARGET,
        "rss": row["clipfast_rss_gib"] <= row["rss_budget_gib"],
    }
    return row


def markdown(rows: list[dict[str, Any]], where: str, repeats: int) -> str:
    lines = [
        f"Load of a full-size OpenAI checkpoint on the CPU (fp32), median of {repeats} fresh processes, "
        f"page cache warm. Machine: {where}.",
        "",
        "| model | clip.load | open_clip | naive floor | physical floor | **clipfast.load** "
        "| vs clip.load | vs physical floor | peak RSS over `import torch`: clipfast / clip / budget |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ok = row["targets"]
        target = SPEEDUP_TARGET.get(row["case"], 10.0)
        lines.append(
            f"| {row['case']} | {row['clip_s']:.3f} s | {row['open_clip_s']:.3f} s "
            f"| {row['naive_floor_s']:.3f} s | {row['physical_floor_s']:.3f} s "
            f"| **{row['clipfast_s']:.3f} s** "
            f"| {row['ratio']:.1f}x (target {target:g}x{'' if ok['speedup'] else ' NOT'} met) "
            f"| {row['vs_physical_floor']:.2f}x {'' if ok['physical_floor'] else '(target 1.2x NOT met)'} "
            f"| {row['clipfast_rss_gib']:.2f} / {row['clip_rss_gib']:.2f} / {row['rss_budget_gib']:.2f} GiB"
            f"{'' if ok['rss'] else ' (over budget)'} |"
        )
    imports = ", ".join(
        f"{LABELS[m]} {statistics.median(r[f'{m}_import_s'] for r in rows):.2f} s"
        for m in ("clipfast", "clip", "open_clip")
    )
    lines += ["", f"Import cost beyond `import torch` (not in the load times): {imports}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="ViT-B/32 only, 2 repeats (checks the script works)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per method (default 5)")
    parser.add_argument("--models", default=None, help="comma-separated model names")
    args = parser.parse_args(argv)
    models = ["ViT-B/32"] if args.quick else MODELS
    if args.models:
        models = [m.strip() for m in args.models.split(",")]
    repeats = args.repeats or (2 if args.quick else 5)

    sys.path.insert(0, str(ROOT / "python"))
    where = machine()
    print(f"bench_load: {where}", flush=True)
    rows = [bench_model(name, repeats) for name in models]
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, where, repeats)
    (RESULTS / "load.md").write_text(table)
    (RESULTS / "load.json").write_text(json.dumps({"machine": where, "rows": rows}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
