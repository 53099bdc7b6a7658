"""Hugging Face folders and converted files: clipfast.load of a transformers CLIPModel folder vs
transformers' own ``CLIPModel.from_pretrained``, and loading the safetensors file ``clipfast convert``
wrote vs loading its source.

Full-size fp32 ViT-B/32 in transformers' layout (``openai/clip-vit-base-patch32``'s configuration,
random weights), written once to benches/.cache/huggingface/ with ``save_pretrained``, and converted
with ``clipfast convert``; OpenAI's ViT-B/32 archive (bench_load's, random weights) converted too.
Every load runs in a fresh process (imports done first, reported apart), page cache warm, fp32 on
the CPU; the methods are interleaved, medians of the repeats.

- hf_folder:       ``clipfast.load(folder, device="cpu")`` vs ``CLIPModel.from_pretrained(folder)``
- hf_folder_mmap:  the same with ``mmap=True``: like ``from_pretrained``, tensors whose dtype does not
                   change stay copy-on-write views of the mapped file, read when first used
- convert_hf:      ``clipfast.load(converted.safetensors)`` vs ``clipfast.load(folder)``
- convert_openai:  ``clipfast.load(converted.safetensors)`` vs ``clipfast.load(ViT-B-32.pt)``

Each run also times the first image embedding after the load (one 224x224 image): a lazily mapped
model reads its weights there, so "load + first embedding" is what a user waits for in both cases.

    python benches/bench_huggingface.py [--quick] [--repeats N]
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
from bench_load import child_env as load_child_env

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benches" / ".cache"
HF = CACHE / "huggingface"
RESULTS = ROOT / "benches" / "results"

# case -> (description, reference method, clipfast method, target speed-up or None, target text)
CASES: dict[str, tuple[str, str, str, float | None, str]] = {
    "hf_folder": (
        "HF folder (model.safetensors)",
        "transformers",
        "clipfast_folder",
        2.0,
        ">= 2x",
    ),
    "hf_folder_mmap": (
        "HF folder, mmap=True",
        "transformers",
        "clipfast_folder_mmap",
        None,
        "-",
    ),
    "convert_hf": (
        "converted file vs its HF folder",
        "clipfast_folder",
        "clipfast_converted_hf",
        None,
        "-",
    ),
    "convert_openai": (
        "converted file vs its OpenAI archive",
        "clipfast_archive",
        "clipfast_converted_openai",
        None,
        "-",
    ),
}
LABELS = {
    "transformers": "`CLIPModel.from_pretrained(folder)`",
    "clipfast_folder": "`clipfast.load(folder)`",
    "clipfast_folder_mmap": "`clipfast.load(folder, mmap=True)`",
    "clipfast_archive": "`clipfast.load(ViT-B-32.pt)`",
    "clipfast_converted_hf": "`clipfast.load(converted)`",
    "clipfast_converted_openai": "`clipfast.load(converted)`",
}

# Runs in a fresh interpreter: argv = method, folder of the files.
CHILD = r"""
import json, sys, time, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
method, cache = sys.argv[1], sys.argv[2]
import torch

t0 = time.perf_counter()
if method == "transformers":
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
else:
    import clipfast
import_s = time.perf_counter() - t0

paths = {
    "clipfast_folder": cache + "/huggingface/vit-b-32",
    "clipfast_folder_mmap": cache + "/huggingface/vit-b-32",
    "clipfast_archive": cache + "/ViT-B-32.pt",
    "clipfast_converted_hf": cache + "/huggingface/vit-b-32.converted.safetensors",
    "clipfast_converted_openai": cache + "/huggingface/ViT-B-32.converted.safetensors",
}
image = torch.zeros(1, 3, 224, 224)
t0 = time.perf_counter()
if method == "transformers":
    model = CLIPModel.from_pretrained(cache + "/huggingface/vit-b-32")
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        model.get_image_features(pixel_values=image)
    first_s = time.perf_counter() - t0
    check = float(model.visual_projection.weight.double().sum())
else:
    model, preprocess = clipfast.load(paths[method], device="cpu", mmap=method.endswith("_mmap"))
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        model.encode_image(image)
    first_s = time.perf_counter() - t0
    check = float(model.visual.proj.double().sum())
print(json.dumps({"load_s": load_s, "first_s": first_s, "import_s": import_s, "check": check}))
"""


def child_env() -> dict[str, str]:
    env = load_child_env()  # clipfast from python/, its modules byte-compiled as an install's are
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a loaded VM
    return env


def ensure_files() -> None:
    """The HF folder, OpenAI's archive and both converted files (written once)."""
    HF.mkdir(parents=True, exist_ok=True)
    folder = HF / "vit-b-32"
    if not (folder / ".complete").is_file():
        print(f"writing {folder} (once) ...", flush=True)
        code = (
            "import sys, warnings; warnings.filterwarnings('ignore'); from clipfast import _testing; "
            "_testing.write_hf_folder(sys.argv[1], _testing.build_hf_model(_testing.HF_VIT_B_32))"
        )
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env=child_env())
        (folder / ".complete").write_text("ok\n")
    archive = CACHE / "ViT-B-32.pt"
    if not archive.is_file():
        print(f"writing {archive} (once) ...", flush=True)
        partial = archive.with_name(f".{archive.name}.partial")
        code = (
            "import sys, warnings; warnings.filterwarnings('ignore'); from clipfast import _testing; "
            "_testing.write_openai_archive(sys.argv[1], _testing.spec('ViT-B/32'))"
        )
        subprocess.run([sys.executable, "-c", code, str(partial)], check=True, env=child_env())
        os.replace(partial, archive)
    for source, out in (
        (folder, HF / "vit-b-32.converted.safetensors"),
        (archive, HF / "ViT-B-32.converted.safetensors"),
    ):
        if not out.is_file():
            subprocess.run(
                [sys.executable, "-m", "clipfast", "convert", str(source), str(out)],
                check=True,
                env=child_env(),
            )


def warm() -> None:
    for path in [*HF.rglob("*"), CACHE / "ViT-B-32.pt"]:
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def run_once(method: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(CACHE)],
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
    methods = sorted({m for case in cases for m in CASES[case][1:3]})
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for r in range(repeats):
        for method in methods:  # interleaved, so that drifts in machine load hit all alike
            runs[method].append(run_once(method))
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    rows = []
    for case in cases:
        label, reference, ours_method, target, target_text = CASES[case]
        ours = [run["load_s"] for run in runs[ours_method]]
        theirs = [run["load_s"] for run in runs[reference]]
        checks = {round(run["check"], 3) for m in (reference, ours_method) for run in runs[m]}
        assert len(checks) == 1, f"{case}: the loads gave different weights {checks}"
        ratios = sorted(t / o for t, o in zip(theirs, ours))
        ratio = statistics.median(theirs) / statistics.median(ours)
        first_ours = [run["first_s"] for run in runs[ours_method]]
        first_theirs = [run["first_s"] for run in runs[reference]]
        rows.append(
            {
                "case": label,
                "reference": LABELS[reference],
                "clipfast": LABELS[ours_method],
                "reference_s": statistics.median(theirs),
                "clipfast_s": statistics.median(ours),
                "reference_range_s": [min(theirs), max(theirs)],
                "clipfast_range_s": [min(ours), max(ours)],
                "ratio": ratio,
                "paired_ratio_range": [ratios[0], ratios[-1]],
                "reference_first_s": statistics.median(first_theirs),
                "clipfast_first_s": statistics.median(first_ours),
                "first_ratio": statistics.median(first_theirs) / statistics.median(first_ours),
                "target": target_text,
                "target_met": None if target is None else ratio >= target,
                "repeats": repeats,
                "reference_import_s": statistics.median(run["import_s"] for run in runs[reference]),
                "clipfast_import_s": statistics.median(run["import_s"] for run in runs[ours_method]),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], where: str) -> str:
    repeats = rows[0]["repeats"] if rows else 0
    lines = [
        f"fp32 ViT-B/32 (random weights) on the CPU, first call in a fresh process, page cache warm, "
        f"median of {repeats} (range). Machine: {where}.",
        "",
        "| case | reference | reference s | clipfast | **clipfast s** | speed-up (per-run range) | target "
        "| load + first embedding: reference / clipfast s | speed-up |",
        "|---|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        low, high = row["paired_ratio_range"]
        ref_low, ref_high = row["reference_range_s"]
        our_low, our_high = row["clipfast_range_s"]
        met = "" if row["target_met"] in (None, True) else " NOT met"
        lines.append(
            f"| {row['case']} | {row['reference']} "
            f"| {row['reference_s']:.3f} ({ref_low:.3f}-{ref_high:.3f}) | {row['clipfast']} "
            f"| **{row['clipfast_s']:.3f}** ({our_low:.3f}-{our_high:.3f}) "
            f"| {row['ratio']:.2f}x ({low:.2f}-{high:.2f}) | {row['target']}{met} "
            f"| {row['reference_first_s']:.3f} / {row['clipfast_first_s']:.3f} | {row['first_ratio']:.2f}x |"
        )
    hf = next((r for r in rows if r["reference"] == LABELS["transformers"]), None)
    if hf is not None:
        lines += [
            "",
            "`from_pretrained` maps the safetensors file and leaves every weight unread until first use "
            "(as `mmap=True` does for clipfast); `clipfast.load`'s default owns its memory, every weight "
            "read and converted during the load.",
            "",
            "Imports (not timed) beyond `import torch`: transformers' `CLIPModel` "
            f"{hf['reference_import_s']:.2f} s, clipfast {hf['clipfast_import_s']:.2f} s.",
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
    print(f"bench_huggingface: {where}", flush=True)
    rows = bench(repeats, cases)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, where)
    (RESULTS / "huggingface.md").write_text(table)
    (RESULTS / "huggingface.json").write_text(json.dumps({"machine": where, "rows": rows}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
