"""open_clip models: clipfast.load of an open_clip folder vs open_clip's own load, and
clipfast.load_checkpoint vs open_clip's load_checkpoint into a model that exists.

A full-size fp32 ViT-B-32 in open_clip's layout (its published configuration, GELU, random weights)
is written once to benches/.cache/: a folder with ``open_clip_config.json`` and
``open_clip_model.safetensors``, one with ``open_clip_pytorch_model.bin``, and the same state dict as
``.pt`` and ``.safetensors`` files. Every load runs in a fresh process (imports done first, reported
apart), page cache warm; the methods are interleaved, medians of the repeats.

- folder:      ``clipfast.load(folder, device="cpu")`` vs
               ``open_clip.create_model_and_transforms("local-dir:" + folder)`` (safetensors, .bin)
- checkpoint:  ``clipfast.load_checkpoint(model, path)`` vs ``open_clip.load_checkpoint(model, path)``
               into the same open_clip ViT-B-32 made before the timer starts (.pt, .safetensors)

    python benches/bench_open_clip.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _machine import machine
from bench_load import child_env  # clipfast from python/, its modules byte-compiled as installed

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benches" / ".cache" / "open_clip"
RESULTS = ROOT / "benches" / "results"
MODEL = "ViT-B-32"

# case -> (description, reference label, target speed-up or None for "no slower", target text)
CASES: dict[str, tuple[str, str, float, str]] = {
    "folder_safetensors": ("open_clip folder, safetensors", "create_model_and_transforms", 8.0, ">= 8x"),
    "folder_bin": ("open_clip folder, .bin", "create_model_and_transforms", 10.0, ">= 10x"),
    "checkpoint_pt": ("load_checkpoint, .pt", "open_clip.load_checkpoint", 2.0, ">= 2x"),
    "checkpoint_safetensors": ("load_checkpoint, safetensors", "open_clip.load_checkpoint", 1.0, "no slower"),
}

# Runs in a fresh interpreter: argv = library ("clipfast" | "open_clip"), case, cache folder.
CHILD = r"""
import json, sys, time, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
library, case, cache = sys.argv[1], sys.argv[2], sys.argv[3]
import torch

t0 = time.perf_counter()
import open_clip  # both need it: the model for load_checkpoint is open_clip's
if library == "clipfast":
    import clipfast
import_s = time.perf_counter() - t0

if case.startswith("checkpoint"):  # not timed: the model the checkpoint is loaded into
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = cache + ("/ViT-B-32.pt" if case == "checkpoint_pt" else "/ViT-B-32.safetensors")
else:
    folder = cache + ("/folder-safetensors" if case == "folder_safetensors" else "/folder-bin")

t0 = time.perf_counter()
if case.startswith("checkpoint"):
    if library == "clipfast":
        result = clipfast.load_checkpoint(model, path)
    else:
        result = open_clip.load_checkpoint(model, path)
elif library == "clipfast":
    model, preprocess = clipfast.load(folder, device="cpu")
else:
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
load_s = time.perf_counter() - t0
check = float(model.visual.proj.double().sum())  # the weights arrived (same file, same sum)
print(json.dumps({"load_s": load_s, "import_s": import_s, "check": check}))
"""


def ensure_files() -> None:
    """The folders and files, written once (fp32, open_clip's ViT-B-32 configuration, GELU)."""
    marker = CACHE / ".complete"
    if marker.is_file():
        return
    print(f"writing {CACHE} (once) ...", flush=True)
    code = r"""
import json, os, sys, torch, warnings
warnings.filterwarnings("ignore")
import open_clip
from open_clip.factory import get_model_config
from safetensors.torch import save_file
cache = sys.argv[1]
torch.manual_seed(0)
model = open_clip.create_model("ViT-B-32", pretrained=None)
state = {k: v.contiguous() for k, v in model.state_dict().items()}
config = {"model_cfg": get_model_config("ViT-B-32"), "preprocess_cfg": {}}
folders = (
    ("folder-safetensors", "open_clip_model.safetensors"),
    ("folder-bin", "open_clip_pytorch_model.bin"),
)
for folder, weights in folders:
    os.makedirs(os.path.join(cache, folder), exist_ok=True)
    with open(os.path.join(cache, folder, "open_clip_config.json"), "w") as f:
        json.dump(config, f)
    path = os.path.join(cache, folder, weights)
    save_file(state, path) if weights.endswith(".safetensors") else torch.save(state, path)
torch.save(state, os.path.join(cache, "ViT-B-32.pt"))
save_file(state, os.path.join(cache, "ViT-B-32.safetensors"))
"""
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(CACHE)], check=True, env=child_env())
    marker.write_text("ok\n")


def warm() -> None:
    for path in CACHE.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def run_once(library: str, case: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, library, case, str(CACHE)],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench(repeats: int, cases: list[str]) -> list[dict[str, Any]]:
    ensure_files()
    warm()
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(repeats):
        for case in cases:  # interleaved, so that drifts in machine load hit both alike
            for library in ("open_clip", "clipfast"):
                runs.setdefault((case, library), []).append(run_once(library, case))
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    rows = []
    for case in cases:
        label, reference, target, target_text = CASES[case]
        ours = [run["load_s"] for run in runs[(case, "clipfast")]]
        theirs = [run["load_s"] for run in runs[(case, "open_clip")]]
        checks = {run["check"] for key in ((case, "clipfast"), (case, "open_clip")) for run in runs[key]}
        assert len(checks) == 1, f"{case}: the two loads gave different weights {checks}"
        ratios = sorted(t / o for t, o in zip(theirs, ours))
        ratio = statistics.median(theirs) / statistics.median(ours)
        rows.append(
            {
                "case": label,
                "reference": reference,
                "reference_s": statistics.median(theirs),
                "clipfast_s": statistics.median(ours),
                "reference_range_s": [min(theirs), max(theirs)],
                "clipfast_range_s": [min(ours), max(ours)],
                "ratio": ratio,
                "paired_ratio_range": [ratios[0], ratios[-1]],
                "target": target_text,
                "target_met": ratio >= target,
                "repeats": repeats,
                "clipfast_import_s": statistics.median(run["import_s"] for run in runs[(case, "clipfast")]),
                "open_clip_import_s": statistics.median(run["import_s"] for run in runs[(case, "open_clip")]),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], where: str, load: str = "") -> str:
    repeats = rows[0]["repeats"] if rows else 0
    lines = [
        f"fp32 open_clip ViT-B-32 (GELU, random weights), first call in a fresh process, page cache warm, "
        f"median of {repeats} (range). Machine: {where}{load}.",
        "",
        "| case | open_clip | open_clip s | **clipfast s** | speed-up (per-run range) | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        low, high = row["paired_ratio_range"]
        ref_low, ref_high = row["reference_range_s"]
        our_low, our_high = row["clipfast_range_s"]
        met = "" if row["target_met"] else " NOT met"
        lines.append(
            f"| {row['case']} | `{row['reference']}` "
            f"| {row['reference_s']:.3f} ({ref_low:.3f}-{ref_high:.3f}) "
            f"| **{row['clipfast_s']:.3f}** ({our_low:.3f}-{our_high:.3f}) "
            f"| {row['ratio']:.1f}x ({low:.1f}-{high:.1f}) | {row['target']}{met} |"
        )
    imports = (
        f"{statistics.median(r['open_clip_import_s'] for r in rows):.2f} s (open_clip) and "
        f"{statistics.median(r['clipfast_import_s'] for r in rows):.2f} s (open_clip + clipfast)"
        if rows
        else ""
    )
    lines += [
        "",
        "`load_checkpoint` loads into the same open_clip model, made before the timer starts; "
        f"imports (not timed) took {imports} beyond `import torch`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats (checks the script works)")
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per method (default 5)")
    parser.add_argument("--cases", default=None, help=f"comma-separated, of {', '.join(CASES)}")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    cases = [c.strip() for c in args.cases.split(",")] if args.cases else list(CASES)
    sys.path.insert(0, str(ROOT / "python"))
    where = machine()
    print(f"bench_open_clip: {where}", flush=True)
    before = os.getloadavg()[0]
    rows = bench(repeats, cases)
    after = os.getloadavg()[0]
    load = f"; load average {before:.1f} before, {after:.1f} after (2 would be a quiet 2-core machine)"
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, where, load)
    (RESULTS / "open_clip.md").write_text(table)
    (RESULTS / "open_clip.json").write_text(
        json.dumps({"machine": where, "load_average": [before, after], "rows": rows}, indent=2) + "\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
