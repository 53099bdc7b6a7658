"""Load time and peak memory: clipfast.load vs clip.load(jit=False) vs open_clip vs two floors, warm and
cold.

Full-size checkpoints of the nine official architectures in OpenAI's exact format (random weights) are
written once to benches/.cache/. Every load runs in a fresh process: ``import torch`` and
``import clipfast`` (or the reference's import) come first, their cost reported on its own line; the
timed part is the user's first call, ``clipfast.load(path, device="cpu")``, which includes importing
what ``import clipfast`` leaves for first use. Python modules are byte-compiled as in an installed
wheel (``PYTHONDONTWRITEBYTECODE`` is dropped for the children).

Warm table (page cache warm), all nine models; the references only for ViT-B/32, RN50 and ViT-L/14:

- clipfast:       ``clipfast.load(path, device="cpu")``
- clip:           ``clip.load(path, device="cpu", jit=False)`` (openai/CLIP, the reference)
- open_clip:      ``open_clip.load_openai_model(path, device="cpu")`` (its loader of OpenAI's .pt files)
- naive floor:    ``torch.load(state_dict.pt, mmap=True)`` + a meta-device model +
                  ``load_state_dict(assign=True)`` + ``.float()``
- physical floor: allocate the fp32 weights and fill them from the file's (mapped, fp16) tensors with
                  torch's multi-threaded copy: what any CPU load must at least do

Cold table (``--cold``, ViT-B/32 and ViT-L/14; TorchScript archive, torch.save state dict and
safetensors): rounds of (evict the file, read it with ``dd``), (evict it, clipfast.load), (warm
clipfast.load), so that the disk's drift hits the read and the load of a round alike. Eviction:
``/proc/sys/vm/drop_caches`` as root (``--evict drop_caches``), else ``posix_fadvise(DONTNEED)`` on
the file (``--evict fadvise``, the default: it leaves the rest of a shared machine's page cache alone);
the file's residency is checked after each eviction. Target (issue 16): each round's cold load <=
1.15 x max(that round's read, the median warm load), in the median round and in the round whose
read was fastest.

Peak RSS is ``ru_maxrss`` at the end, minus its value right after ``import torch``.

    python benches/bench_load.py [--quick] [--repeats N] [--models ViT-B/32,RN50] [--cold|--no-cold]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _machine import machine

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benches" / ".cache"
RESULTS = ROOT / "benches" / "results"
#: The models the references are timed on (clip.load takes 2-9 s a load); clipfast and the physical
#: floor run on all nine.
REFERENCE_MODELS = ["ViT-B/32", "RN50", "ViT-L/14"]
MODELS = [
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "ViT-B/32",
    "ViT-B/16",
    "ViT-L/14",
    "ViT-L/14@336px",
]
COLD_MODELS = ["ViT-B/32", "ViT-L/14"]
METHODS = ["clipfast", "clip", "open_clip", "naive_floor", "physical_floor"]
OWN_METHODS = ["clipfast", "physical_floor"]
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
COLD_TARGET = 1.15
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

if len(sys.argv) > 5:  # a cold load: the file leaves the page cache right before the timed call
    evict = sys.argv[5]
    if evict == "drop_caches":
        import os
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    else:
        import os
        fd = os.open(archive, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

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
    # An installed wheel's modules are byte-compiled; compiling clipfast's own on every fresh
    # process (this variable is set on the development machines) is not what a user pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_once(
    method: str, archive: Path, state: Path, spec: dict[str, Any], evict: str | None = None
) -> dict[str, float]:
    extra = [evict] if evict else []
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(archive), str(state), json.dumps(spec), *extra],
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
    methods = METHODS if name in REFERENCE_MODELS else OWN_METHODS
    run_once("clipfast", archive, state, spec)  # untimed: byte-compiles the modules once
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for r in range(repeats):
        for method in methods:  # interleaved, so that drifts in machine load hit every method alike
            runs[method].append(run_once(method, archive, state, spec))
        print(f"  {name}: repeat {r + 1}/{repeats} done", flush=True)

    def med(method: str, field: str) -> float:
        return statistics.median(run[field] for run in runs[method])

    weights = fp32_weight_bytes(spec)
    row: dict[str, Any] = {"case": name, "fp32_weights_gib": weights / GIB, "repeats": repeats}
    for method in methods:
        row[f"{method}_s"] = med(method, "load_s")
        times = [r["load_s"] for r in runs[method]]
        row[f"{method}_range_s"] = [min(times), max(times)]
        row[f"{method}_import_s"] = med(method, "import_s")
        row[f"{method}_rss_gib"] = statistics.median(
            (run["peak_rss"] - run["base_rss"]) / GIB for run in runs[method]
        )
    # Each round's ratio to the floor (the two ran back to back), then the median of those.
    per_round = [c["load_s"] / f["load_s"] for c, f in zip(runs["clipfast"], runs["physical_floor"])]
    row["vs_physical_floor"] = statistics.median(per_round)
    row["vs_physical_floor_range"] = [min(per_round), max(per_round)]
    row["rss_budget_gib"] = RSS_FACTOR * weights / GIB
    row["targets"] = {
        "physical_floor": row["vs_physical_floor"] <= FLOOR_TARGET,
        "rss": row["clipfast_rss_gib"] <= row["rss_budget_gib"],
    }
    if "clip_s" in row:
        row["reference_s"] = row["clip_s"]
        row["ratio"] = row["clip_s"] / row["clipfast_s"]
        row["vs_open_clip"] = row["open_clip_s"] / row["clipfast_s"]
        row["vs_naive_floor"] = row["clipfast_s"] / row["naive_floor_s"]
        row["targets"]["speedup"] = row["ratio"] >= SPEEDUP_TARGET.get(name, 10.0)
    return row


def markdown(rows: list[dict[str, Any]], where: str, repeats: int) -> str:
    lines = [
        f'First `clipfast.load(path, device="cpu")` in a fresh process (fp32), median of {repeats}, page '
        f"cache warm; the references for three models. Machine: {where}.",
        "",
        "| model | clip.load | open_clip | naive floor | physical floor | **clipfast.load** "
        "| vs clip.load | vs physical floor (range) "
        "| peak RSS over `import torch`: clipfast / clip / budget |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def seconds(row: dict[str, Any], method: str) -> str:
        return f"{row[f'{method}_s']:.3f} s" if f"{method}_s" in row else "—"

    for row in rows:
        ok = row["targets"]
        if "ratio" in row:
            target = SPEEDUP_TARGET.get(row["case"], 10.0)
            speedup = f"{row['ratio']:.1f}x (target {target:g}x{'' if ok['speedup'] else ' NOT'} met)"
        else:
            speedup = "—"
        low, high = row["vs_physical_floor_range"]
        floor = f"{row['vs_physical_floor']:.2f}x ({low:.2f}-{high:.2f})"
        if not ok["physical_floor"]:
            floor += " (target 1.2x NOT met)"
        clip_rss = f"{row['clip_rss_gib']:.2f}" if "clip_rss_gib" in row else "—"
        lines.append(
            f"| {row['case']} | {seconds(row, 'clip')} | {seconds(row, 'open_clip')} "
            f"| {seconds(row, 'naive_floor')} | {seconds(row, 'physical_floor')} "
            f"| **{row['clipfast_s']:.3f} s** | {speedup} | {floor} "
            f"| {row['clipfast_rss_gib']:.2f} / {clip_rss} / {row['rss_budget_gib']:.2f} GiB"
            f"{'' if ok['rss'] else ' (over budget)'} |"
        )
    imports = ", ".join(
        f"{LABELS[m]} {statistics.median(r[f'{m}_import_s'] for r in rows if f'{m}_import_s' in r):.2f} s"
        for m in ("clipfast", "clip", "open_clip")
        if any(f"{m}_import_s" in r for r in rows)
    )
    lines += [
        "",
        f"Import cost beyond `import torch` (not in the load times): {imports}. `import clipfast` is lazy: "
        "what it leaves for first use is in clipfast.load's time. vs physical floor: the median (and range) "
        "of each round's ratio, clipfast and floor running back to back.",
    ]
    return "\n".join(lines) + "\n"


def safetensors_copy(state: Path) -> Path:
    """The state dict's tensors (fp16, as OpenAI's) as a .safetensors file, written once."""
    path = state.with_name(state.name.replace(".state_dict.pt", ".safetensors"))
    if not path.is_file():
        code = (
            "import sys; from safetensors.torch import save_file; from clipfast.checkpoint import "
            "read_state_dict; sd = read_state_dict(sys.argv[1]); "
            "save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])"
        )
        partial = path.with_name(f".{path.name}.partial")
        subprocess.run([sys.executable, "-c", code, str(state), str(partial)], check=True, env=child_env())
        os.replace(partial, path)
    return path


def evict(path: Path, how: str) -> int:
    """Drops ``path`` from the page cache; returns how many of its bytes are still resident."""
    if how == "drop_caches":
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1")
    else:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return resident_bytes(path)


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache: ``mincore`` on a map of the file (Linux)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, *[ctypes.c_int] * 3, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return -1
        try:
            if libc.mincore(address, size, vec) != 0:
                return -1
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) * mmap.PAGESIZE


def read_seconds(path: Path) -> float:
    """Wall time of reading the whole file with dd (16 MiB blocks), as a disk's sequential read."""
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=16M"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def bench_cold(name: str, rounds: int, how: str) -> list[dict[str, Any]]:
    """Interleaved rounds of (cold read, cold load, warm load) for each file format of ``name``."""
    from clipfast import _testing

    spec = asdict(_testing.spec(name))
    archive, state = ensure_checkpoints(name)
    files = {"TorchScript": archive, "state dict": state, "safetensors": safetensors_copy(state)}
    rows = []
    for kind, path in files.items():
        run_once("clipfast", path, state, spec)  # untimed: byte-compiles the modules once
        reads, colds, warms, left = [], [], [], []
        for r in range(rounds):
            left.append(evict(path, how))
            reads.append(read_seconds(path))
            colds.append(run_once("clipfast", path, state, spec, evict=how)["load_s"])
            warms.append(run_once("clipfast", path, state, spec)["load_s"])
            print(
                f"  {name} {kind}: round {r + 1}/{rounds}: read {reads[-1]:.3f} s, cold load "
                f"{colds[-1]:.3f} s, warm {warms[-1]:.3f} s",
                flush=True,
            )
        warm = statistics.median(warms)
        ratios = [c / max(rd, warm) for c, rd in zip(colds, reads)]
        order = sorted(range(rounds), key=lambda i: ratios[i])
        median_round = order[len(order) // 2]
        fastest = min(range(rounds), key=lambda i: reads[i])
        rows.append(
            {
                "case": f"{name} ({kind}), cold",
                "file_gib": path.stat().st_size / GIB,
                "reads_s": reads,
                "cold_s": colds,
                "warm_s": warms,
                "resident_after_evict": max(left),
                "ratios": ratios,
                "median_round": median_round,
                "fastest_disk_round": fastest,
                "targets": {
                    "median": ratios[median_round] <= COLD_TARGET,
                    "fastest_disk": ratios[fastest] <= COLD_TARGET,
                },
                # For the summary plot: the cold load against the read of the same round.
                "reference_s": reads[median_round],
                "clipfast_s": colds[median_round],
            }
        )
    return rows


def cold_markdown(rows: list[dict[str, Any]], where: str, how: str) -> str:
    rounds = len(rows[0]["cold_s"]) if rows else 0
    evicted = "drop_caches" if how == "drop_caches" else "posix_fadvise(DONTNEED) on the file"
    lines = [
        f"Cold cache: the file is evicted ({evicted}) before each read and each load; {rounds} interleaved "
        "rounds of (read the file with dd, first clipfast.load in a fresh process, warm load). Ratio: cold "
        f"load / max(that round's read, median warm load), target <= {COLD_TARGET}. Machine: {where}.",
        "",
        "| file | size | read (range) | warm load | cold load (range) | ratio, median round "
        "| ratio, round with the fastest read |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        m, f = row["median_round"], row["fastest_disk_round"]
        reads, colds = row["reads_s"], row["cold_s"]
        ok = row["targets"]
        lines.append(
            f"| {row['case'].removesuffix(', cold')} | {row['file_gib'] * 1024:.0f} MiB "
            f"| {statistics.median(reads):.3f} s ({min(reads):.3f}-{max(reads):.3f}) "
            f"| {statistics.median(row['warm_s']):.3f} s "
            f"| {statistics.median(colds):.3f} s ({min(colds):.3f}-{max(colds):.3f}) "
            f"| {row['ratios'][m]:.2f}x{'' if ok['median'] else ' (NOT met)'} "
            f"| {row['ratios'][f]:.2f}x (read {reads[f]:.3f} s, load {colds[f]:.3f} s)"
            f"{'' if ok['fastest_disk'] else ' (NOT met)'} |"
        )
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
    parser.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True, help="the cold table")
    parser.add_argument("--warm", action=argparse.BooleanOptionalAction, default=True, help="the warm table")
    parser.add_argument(
        "--evict",
        choices=["fadvise", "drop_caches"],
        default="fadvise",
        help="how the cold table evicts the file (drop_caches needs root and drops every file's pages)",
    )
    args = parser.parse_args(argv)
    models = ["ViT-B/32"] if args.quick else MODELS
    if args.models:
        models = [m.strip() for m in args.models.split(",")]
    repeats = args.repeats or (2 if args.quick else 5)

    sys.path.insert(0, str(ROOT / "python"))
    where = machine()
    print(f"bench_load: {where}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.warm:
        rows = [bench_model(name, repeats) for name in models]
        table = markdown(rows, where, repeats)
        (RESULTS / "load.md").write_text(table)
        (RESULTS / "load.json").write_text(json.dumps({"machine": where, "rows": rows}, indent=2) + "\n")
        print(table)
    if args.cold:
        cold_models = [m for m in models if m in COLD_MODELS] or models[:1]
        cold = [row for name in cold_models for row in bench_cold(name, repeats, args.evict)]
        table = cold_markdown(cold, where, args.evict)
        (RESULTS / "load_cold.md").write_text(table)
        (RESULTS / "load_cold.json").write_text(json.dumps({"machine": where, "rows": cold}, indent=2) + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
