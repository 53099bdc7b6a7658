"""Embedding a folder of JPEGs: ``clipfast.embed`` vs the usual clip + torch DataLoader job, and vs
the model's forward pass alone, side by side in one run.

Every case runs in a fresh interpreter and is timed from its first line (before ``import torch``)
to the end: imports, model load, reading, preprocessing, the model, writing the embeddings.

- clipfast: ``clipfast.embed(folder, model, out, batch_size=B, device="cpu")`` (clip-retrieval's
  layout, L2-normalised fp16), fed as it feeds a CPU model whose threads fill the cores:
  ``preprocess_batch`` on all cores in turns with the forward passes; it reports how long the
  model waited for data.
- clip + DataLoader: ``clip.load`` (clip-anytorch) and a ``torch.utils.data.DataLoader`` of
  ``preprocess(Image.open(p))`` with one worker process per core, the same batch size, the same
  normalisation and fp16 output, saved with ``np.save`` (what clip-retrieval's ``clip_inference``
  does); the time the model waits for each batch is measured the same way.
- forward only: the same model's ``encode_image`` on ready batches under ``inference_mode``,
  after the load (not counted): the rate the model itself allows. The target: the whole clipfast
  job at >= 0.9x of it. It runs with the OpenMP wait policy clipfast.embed uses
  (``OMP_WAIT_POLICY=PASSIVE`` unless set: torch's threads sleep instead of spinning between
  parallel regions, leaving the cycles to the reader); the DataLoader job keeps torch's default.
- data pipeline alone: clipfast's reader (read + ``preprocess_batch``) without a model, on one and on
  all cores (items/s per core: what it can feed a GPU per CPU core), and clip's per-image PIL
  preprocess on one core for comparison.
- Ray (when Ray is installed; ``--no-ray`` skips it): the same job as a Ray Data pipeline on a local
  Ray with one and with two model actors (``ray.init`` not counted; Ray is given one CPU more than the
  machine has: the actors share the cores for the model, and one slot is left for the read tasks).

Rounds alternate the cases, so a slow moment of the shared machine hits all of them; the table gives
medians and ranges. Images: photo-like synthetic JPEGs (640x480 to 1024x768, quality 90) written
once to benches/.cache/embed_images_N/ (1,000 by default; the data pipeline alone runs on the first
256); the model: full-size ViT-B/32 with random weights in OpenAI's format (random weights do not
change the cost).

    python benches/bench_embed.py [--quick] [--images N] [--rounds R] [--batch-size B] [--no-ray]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benches" / ".cache"
RESULTS = ROOT / "benches" / "results"
sys.path.insert(0, str(ROOT / "benches"))

from _machine import machine  # noqa: E402
from bench_load import child_env, ensure_checkpoints  # noqa: E402

MODEL = "ViT-B/32"


def ensure_images(count: int) -> Path:
    folder = CACHE / f"embed_images_{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    import numpy as np
    from PIL import Image

    print(f"writing {count} JPEGs to {folder} (once) ...", flush=True)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(17)
    sizes = [(640, 480), (800, 600), (1024, 768), (480, 640), (768, 1024), (720, 540)]
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        f1, f2 = rng.uniform(2, 14, 2)
        base = np.stack(
            [
                127 + 100 * np.sin(xx / w * f1 + i) * np.cos(yy / h * f2),
                127 + 90 * np.cos((xx + yy) / (w + h) * (f1 + f2)),
                (xx * (i % 5 + 1) // 7 + yy // 3) % 256,
            ],
            axis=-1,
        )
        img = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp / f"{i:06d}.jpg", quality=90)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


# Each child prints one JSON line; `T0` is taken before anything is imported.
PRELUDE = (
    "import time; T0 = time.perf_counter()\n"
    "import json, os, resource, sys, warnings; warnings.filterwarnings('ignore')\n"
    "def cpu_s():  # this process's threads and its finished children (DataLoader workers)\n"
    "    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime\n"
)

CLIPFAST = PRELUDE + textwrap.dedent(
    """
    import clipfast
    s = clipfast.embed(sys.argv[1], model=sys.argv[2], out=sys.argv[3], batch_size=int(sys.argv[4]),
                       device="cpu", progress=False)
    total = time.perf_counter() - T0
    print(json.dumps({"total_s": total, "n": s.rows, "wait_share": s.model_wait_share, "cpu_s": cpu_s(),
                      "model_s": s.extra["model_seconds"], "wait_s": s.extra["wait_seconds"]}))
    """
)

BASELINE = PRELUDE + textwrap.dedent(
    """
    import numpy as np, torch, clip
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    model, preprocess = clip.load(sys.argv[2], device="cpu")
    paths = sorted(os.path.join(sys.argv[1], f) for f in os.listdir(sys.argv[1]))

    class Images(Dataset):
        def __len__(self): return len(paths)
        def __getitem__(self, i): return preprocess(Image.open(paths[i]))

    loader = DataLoader(Images(), batch_size=int(sys.argv[4]), num_workers=os.cpu_count(), shuffle=False)
    out, wait, model_s = [], 0.0, 0.0
    it = iter(loader)
    with torch.no_grad():
        while True:
            t = time.perf_counter()
            try:
                x = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            wait += t1 - t
            f = model.encode_image(x)
            f /= f.norm(dim=-1, keepdim=True)
            out.append(f.to(torch.float16).numpy())
            model_s += time.perf_counter() - t1
    os.makedirs(sys.argv[3], exist_ok=True)
    np.save(os.path.join(sys.argv[3], "img_emb_0.npy"), np.concatenate(out))
    del it, loader  # the workers exit and are waited for: their CPU time is counted
    total = time.perf_counter() - T0
    print(json.dumps({"total_s": total, "n": len(paths), "wait_share": wait / (wait + model_s),
                      "cpu_s": cpu_s(), "model_s": model_s, "wait_s": wait}))
    """
)

FORWARD = PRELUDE + textwrap.dedent(
    """
    import torch, clipfast
    model, _ = clipfast.load(sys.argv[2], device="cpu")
    n, b = int(sys.argv[1]), int(sys.argv[4])
    x = torch.randn(b, 3, 224, 224)
    with torch.inference_mode():
        model.encode_image(x[:2])  # first-call set-up, not counted
        t, c = time.perf_counter(), cpu_s()
        done = 0
        while done < n:
            k = min(b, n - done)
            model.encode_image(x[:k])
            done += k
        s = time.perf_counter() - t
    print(json.dumps({"forward_s": s, "n": n, "cpu_s": cpu_s() - c}))
    """
)

DATA = PRELUDE + textwrap.dedent(
    """
    import torch
    from PIL import Image
    import clipfast
    from clipfast.embedding import pipeline, sources
    from clipfast.embedding.encoder import ImagePlan
    from clipfast.transforms import for_resolution
    threads, b = int(sys.argv[2]), int(sys.argv[4])
    torch.set_num_threads(threads)
    plan = sources.make_plan([sys.argv[1]], shard_size=10**9)
    image_plan = ImagePlan.of(for_resolution(224))
    pipeline.prepare_batch(plan.samples[:2], plan, image_plan, torch.float32, None, shard=0, last=False,
                           threads=threads)  # the JPEG check at first use, not counted
    t, c = time.perf_counter(), cpu_s()
    for start in range(0, len(plan.samples), b):
        pipeline.prepare_batch(plan.samples[start:start + b], plan, image_plan, torch.float32, None,
                               shard=0, last=False, threads=threads)
    s = time.perf_counter() - t
    result = {"clipfast_s": s, "n": len(plan.samples), "clipfast_cpu_s": cpu_s() - c}
    if threads == 1:
        import clip
        ref = clip.clip._transform(224)
        t, c = time.perf_counter(), cpu_s()
        for smp in plan.samples:
            ref(Image.open(smp.image.path))
        result["clip_s"] = time.perf_counter() - t
        result["clip_cpu_s"] = cpu_s() - c
    print(json.dumps(result))
    """
)

RAY = PRELUDE + textwrap.dedent(
    """
    import ray, clipfast
    ray.init(num_cpus=os.cpu_count() + 1, include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    s = clipfast.embed(sys.argv[1], model=sys.argv[2], out=sys.argv[3], batch_size=int(sys.argv[4]),
                       device="cpu", progress=False, ray=True, actors=int(sys.argv[5]))
    job = time.perf_counter() - t
    ray.shutdown()
    print(json.dumps({"job_s": job, "n": s.rows}))
    """
)


def run(code: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env={**child_env(), **(env or {})},
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def env_of(case: str) -> dict[str, str]:
    """The forward pass alone runs with the OpenMP wait policy clipfast.embed sets for itself (when
    the caller has not set one): the ratio to it measures the pipeline, not a thread setting."""
    if case == "forward":
        return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or "PASSIVE"}
    return {}


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 images, one round (checks the script works)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--no-ray",
        dest="ray",
        action="store_false",
        help="skip the Ray pipeline (1 and 2 actors; default: on)",
    )
    parser.add_argument("--ray-images", type=int, default=256)
    parser.add_argument("--data-images", type=int, default=256, help="images for the data pipeline alone")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds, args.ray_images, args.data_images = 64, 1, 32, 32
    load_before = os.getloadavg()[0]
    archive, _ = ensure_checkpoints(MODEL)
    folder = ensure_images(args.images)
    data_folder = ensure_images(min(args.images, args.data_images))
    cores = os.cpu_count() or 1
    b = args.batch_size
    samples: dict[str, list[dict[str, Any]]] = {
        "clipfast": [],
        "baseline": [],
        "forward": [],
        "data1": [],
        "dataN": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        for r in range(args.rounds):
            for case, code, extra in (
                ("clipfast", CLIPFAST, ()),
                ("baseline", BASELINE, ()),
                ("forward", FORWARD, ()),
            ):
                out = Path(tmp) / f"{case}_{r}"
                target = args.images if case == "forward" else folder
                samples[case].append(run(code, target, archive, out, b, *extra, env=env_of(case)))
                shutil.rmtree(out, ignore_errors=True)
                print(f"round {r + 1}/{args.rounds} {case}: {samples[case][-1]}", flush=True)
            # The data pipeline alone on a subset (a rate: the first images suffice, and clip's PIL
            # preprocess of all of them would add a minute a round).
            samples["data1"].append(run(DATA, data_folder, 1, "-", b))
            samples["dataN"].append(run(DATA, data_folder, cores, "-", b))
        ray_rows = []
        if args.ray and importlib.util.find_spec("ray") is None:
            print("ray is not installed: the Ray rows are left out", flush=True)
        elif args.ray:
            sub = ensure_images(args.ray_images)
            for actors in (1, 2):
                result = run(RAY, sub, archive, Path(tmp) / f"ray{actors}", b, actors)
                ray_rows.append((actors, result))
                print(f"ray, {actors} actor(s): {result}", flush=True)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({cores} would be quiet)"
    n = args.images
    rate = {k: [n / s["total_s"] for s in samples[k]] for k in ("clipfast", "baseline")}
    fwd = [s["n"] / s["forward_s"] for s in samples["forward"]]
    ratio_fwd = [c / f for c, f in zip(rate["clipfast"], fwd)]
    speedup = [s2["total_s"] / s1["total_s"] for s1, s2 in zip(samples["clipfast"], samples["baseline"])]
    cpu_ratio = [f["cpu_s"] / c["cpu_s"] for c, f in zip(samples["clipfast"], samples["forward"])]
    cpu_speedup = [bl["cpu_s"] / c["cpu_s"] for c, bl in zip(samples["clipfast"], samples["baseline"])]
    wait_cf = [100 * s["wait_share"] for s in samples["clipfast"]]
    wait_bl = [100 * s["wait_share"] for s in samples["baseline"]]
    d1 = [s["n"] / s["clipfast_s"] for s in samples["data1"]]
    dn = [s["n"] / s["clipfast_s"] / cores for s in samples["dataN"]]
    clip1 = [s["n"] / s["clip_s"] for s in samples["data1"]]
    # Per CPU-second (all threads): what one core can feed, less disturbed by other jobs than wall time.
    per_cpu = [s["n"] / s["clipfast_cpu_s"] for s in samples["data1"] + samples["dataN"]]
    clip_cpu = [s["n"] / s["clip_cpu_s"] for s in samples["data1"]]
    data_n = samples["data1"][0]["n"]
    target = "met" if med(ratio_fwd) >= 0.9 else "NOT met"
    if med(ratio_fwd) > 1.02:  # faster than the model alone: the machine's load changed between runs
        target = "not decided: the whole job beat the model alone, so the machine's load changed between runs"
    lines = [
        f"{n} JPEGs (640x480 to 1024x768) through full-size {MODEL} (random weights), batch {b}, CPU fp32, "
        f"whole job from interpreter start (imports, model load, reading, preprocessing, model, writing); "
        f"medians of {args.rounds} alternating rounds (range). Machine: {machine()}; {load}.",
        "",
        "| | clip + DataLoader | **clipfast.embed** | forward pass alone |",
        "|---|---:|---:|---:|",
        f"| images/s, whole job | {med(rate['baseline']):.1f} ({spread(rate['baseline'])}) | "
        f"**{med(rate['clipfast']):.1f}** ({spread(rate['clipfast'])}) | {med(fwd):.1f} ({spread(fwd)}) |",
        f"| seconds | {med([s['total_s'] for s in samples['baseline']]):.1f} | "
        f"**{med([s['total_s'] for s in samples['clipfast']]):.1f}** | "
        f"{med([s['forward_s'] for s in samples['forward']]):.1f} (model only) |",
        f"| share of the model loop spent waiting for data | {med(wait_bl):.1f}% | "
        f"**{med(wait_cf):.1f}%** | - |",
        f"| CPU seconds (all threads and worker processes) | "
        f"{med([s['cpu_s'] for s in samples['baseline']]):.1f} | "
        f"**{med([s['cpu_s'] for s in samples['clipfast']]):.1f}** | "
        f"{med([s['cpu_s'] for s in samples['forward']]):.1f} (model only) |",
        "",
        f"clipfast.embed: {med(speedup):.2f}x the clip + DataLoader job ({spread(speedup, '{:.2f}')}), "
        f"{med(ratio_fwd):.2f}x the forward-only rate ({spread(ratio_fwd, '{:.2f}')}; "
        f"target >= 0.9x {target}). By CPU time, which other jobs on a shared machine disturb less: "
        f"{med(cpu_speedup):.2f}x less than the DataLoader job, {med(cpu_ratio):.2f}x the forward pass's "
        f"({spread(cpu_ratio, '{:.2f}')}).",
        f"Data pipeline alone ({data_n} of the images; read + preprocess_batch, no model): {med(d1):.0f} "
        f"images/s on 1 core, {med(dn):.0f} images/s per core on {cores} cores (clip's PIL preprocess: "
        f"{med(clip1):.0f} images/s on 1 core); per CPU-second: {med(per_cpu):.0f} images "
        f"(clip's PIL: {med(clip_cpu):.0f}): what the reader can feed a GPU per CPU core.",
    ]
    if ray_rows:
        lines += [
            "",
            f"Ray Data pipeline on a local Ray (this machine, CPU), {args.ray_images} images, `ray.init` not "
            "counted: "
            + ", ".join(
                f"{a} actor{'s' if a > 1 else ''}: {r['n'] / r['job_s']:.1f} images/s" for a, r in ray_rows
            )
            + ". Cluster figures: not measured here.",
        ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed.md").write_text(text)
    rows = [
        {
            "case": f"embed {n} images (whole job)",
            "reference_s": med([s["total_s"] for s in samples["baseline"]]),
            "clipfast_s": med([s["total_s"] for s in samples["clipfast"]]),
            "ratio": med(speedup),
            "forward_only_ratio": med(ratio_fwd),
        }
    ]
    (RESULTS / "embed.json").write_text(
        json.dumps({"rows": rows, "machine": machine(), "samples": samples}, indent=1)
    )
    print(text)


if __name__ == "__main__":
    main()
