"""Preprocessing throughput: clip's PIL + torchvision pipeline vs clipfast, side by side.

Inputs, in sets of different sizes, shapes and content:
- the public-domain photos in tests/images (512x512 to 640x427);
- other photos in benches/images (a 512x600 portrait, a 512x512 grey-level photo, a 1000x872
  astronomical image, a 1411x1411 square photo; see benches/images/LICENSE.md);
- camera-sized photos: those photos resampled to the sizes cameras and phones save (4032x3024,
  3024x4032, 2048x2048, 1920x1080, 1080x1350) with a little sensor-like noise (written once to
  benches/.cache/ as JPEG, quality 90);
- synthetic photo-like images of 1024x768 and 4000x3000 (benches/.cache/, JPEG, quality 90).

- decoded, 1 core:  ``clip.clip._transform(224)(img)`` vs ``clipfast`` preprocess (same object API)
                    on already decoded PIL images; torch limited to one thread.
- JPEG bytes, 1 core: ``Image.open(BytesIO(b))`` + clip's pipeline vs
                    ``clipfast.preprocess_batch(bytes, threads=1)`` (exact mode).
- JPEG bytes (fast): the same with ``decode="fast"`` (large JPEGs decoded at a reduced DCT scale;
                    photos under 4 x 224 px are not reduced, so they stay exact).
- PNG bytes, 1 core: the tests/images photos saved as PNG, the same pair (clipfast decodes 8-bit
                    PNGs in Rust).
- all cores:        clip's pipeline in a fork process pool with one worker per core (what a DataLoader
                    does) vs ``clipfast.preprocess_batch(items, threads=cores)``.
- scaling:          clipfast on a batch of 32 decoded images of the set, all cores vs one; beside it,
                    the machine's own scaling on memory traffic at that moment (each thread copies
                    its own 64 MiB buffer with numpy, which releases the GIL: all cores vs one), as
                    a VM's vCPUs may share a core or its memory bandwidth with other guests.

Every case is timed ``--repeats`` times, reference and clipfast samples alternating, each sample
about 0.25 s of repeated calls; the table shows medians in images per second and the median of the
per-round ratios (each round's two samples are taken back to back, so a slow moment of this shared
VM hits both sides of a ratio). A set's speed is its images' total time, so large images weigh
more, as in a dataset of them.
Results must be exact: each run also checks clipfast's tensors equal clip's.

    python benches/bench_preprocess.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
CACHE = ROOT / "benches" / ".cache"
RESULTS = ROOT / "benches" / "results"
PHOTOS = ROOT / "tests" / "images"
MORE_PHOTOS = ROOT / "benches" / "images"
#: Sizes cameras and phones save (12 MP 4:3 both ways, square, 16:9, Instagram's 4:5 portrait).
CAMERA_SIZES = [(4032, 3024), (3024, 4032), (2048, 2048), (1920, 1080), (1080, 1350)]

import clipfast  # noqa: E402
from _machine import machine  # noqa: E402
from clipfast import transforms  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

N_PX = 224
SCALING_BATCH = 32  # images per preprocess_batch call when measuring thread scaling
_REFERENCE = clip.clip._transform(N_PX)


def synthetic_jpeg(w: int, h: int) -> bytes:
    path = CACHE / f"synthetic_{w}x{h}.jpg"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(w * h)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack(
            [
                127 + 100 * np.sin(xx / w * 9) * np.cos(yy / h * 4),
                127 + 100 * np.cos((xx + yy) / (w + h) * 13),
                (xx // 3 + yy // 5) % 256,
            ],
            axis=-1,
        )
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(path, quality=90)
    return path.read_bytes()


def camera_sized(sources: list[Path], quick: bool) -> list[bytes]:
    """The photos in ``sources`` resampled (bicubic, cropped to the aspect ratio) to camera sizes,
    with a little Gaussian noise as a sensor leaves (so that JPEG decoding costs what a real photo
    of that size costs), as JPEG quality 90; written once to benches/.cache/."""
    out = []
    sizes = CAMERA_SIZES[2:4] if quick else CAMERA_SIZES
    for i, (w, h) in enumerate(sizes):
        path = CACHE / f"camera_{w}x{h}.jpg"
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            src = Image.open(sources[i % len(sources)]).convert("RGB")
            sw, sh = src.size
            scale = max(w / sw, h / sh)
            big = src.resize((max(w, round(sw * scale)), max(h, round(sh * scale))), Image.Resampling.BICUBIC)
            left, top = (big.width - w) // 2, (big.height - h) // 2
            pixels = np.asarray(big.crop((left, top, left + w, top + h)), dtype=np.float32)
            rng = np.random.default_rng(w * h)
            noisy = np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(path, quality=90)
        out.append(path.read_bytes())
    return out


def inputs(quick: bool) -> dict[str, list[bytes]]:
    photos = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))]
    more = sorted(MORE_PHOTOS.glob("*.jpg"))
    sets = {
        "photos (tests/images, 512-640 px)": photos,
        "other photos (512-1411 px, portrait, square, grey)": [p.read_bytes() for p in more],
        "camera sizes (1080x1350 to 4032x3024)": camera_sized(more, quick),
        "1024x768": [synthetic_jpeg(1024, 768)],
    }
    if not quick:
        sets["4000x3000"] = [synthetic_jpeg(4000, 3000)]
    return sets


def decode(b: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(b))
    img.load()
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def clip_from_bytes(b: bytes) -> torch.Tensor:
    return _REFERENCE(decode(b))


def _init_worker() -> None:
    torch.set_num_threads(1)


def _loops(fn: Callable[[], Any], target_s: float) -> int:
    """How many calls of ``fn`` one timed sample makes: enough to take about ``target_s``."""
    t0 = time.perf_counter()
    fn()  # also the warm-up
    once = max(time.perf_counter() - t0, 1e-6)
    return max(1, round(target_s / once))


class Pair(NamedTuple):
    reference_s: float  # median seconds per call
    ours_s: float
    ratio: float  # median over rounds of reference / ours
    low: float  # the lowest and highest per-round ratio
    high: float


def timed_pair(reference: Callable[[], Any], ours: Callable[[], Any], repeats: int) -> Pair:
    """Medians of seconds per call of each, sampled alternately, and the median per-round ratio;
    each sample is long enough (about 0.25 s) that timer and scheduler noise stay small."""
    loops = (_loops(reference, 0.25), _loops(ours, 0.25))
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, n, out in ((reference, loops[0], samples[0]), (ours, loops[1], samples[1])):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - t0) / n)
    ratios = [r / o for r, o in zip(*samples)]
    return Pair(
        statistics.median(samples[0]),
        statistics.median(samples[1]),
        statistics.median(ratios),
        min(ratios),
        max(ratios),
    )


def memory_scaling(cores: int, repeats: int) -> Pair:
    """The machine's own speed-up on memory traffic: ``cores`` buffer copies of 64 MiB each, on one
    thread vs one per thread (numpy copies with the GIL released)."""
    size = 64 << 20
    buffers = [(np.ones(size, np.uint8), np.zeros(size, np.uint8)) for _ in range(cores)]

    def copy(i: int) -> None:
        np.copyto(buffers[i][1], buffers[i][0])

    with ThreadPoolExecutor(cores) as pool:
        return timed_pair(
            lambda: [copy(i) for i in range(cores)],
            lambda: list(pool.map(copy, range(cores))),
            repeats,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small inputs, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 7)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    pre = transforms.for_resolution(N_PX)
    rows: list[dict[str, Any]] = []

    scaling: list[tuple[str, Pair, Pair]] = []

    def add(case: str, count: int, pair: Pair) -> None:
        ref_s, fast_s = pair.reference_s, pair.ours_s
        rows.append(
            {
                "case": case,
                "reference_s": ref_s / count,
                "clipfast_s": fast_s / count,
                "reference_img_s": count / ref_s,
                "clipfast_img_s": count / fast_s,
                "ratio": pair.ratio,
                "ratio_range": [pair.low, pair.high],
            }
        )
        speeds = f"clip {count / ref_s:8.1f} img/s   clipfast {count / fast_s:8.1f} img/s"
        print(f"{case:48s} {speeds}   x{pair.ratio:.1f} ({pair.low:.1f}-{pair.high:.1f})")

    torch.set_num_threads(1)
    for name, encoded in inputs(args.quick).items():
        images = [decode(b) for b in encoded]
        expected = torch.stack([_REFERENCE(im) for im in images])
        assert torch.equal(torch.stack([pre(im) for im in images]), expected), "not exact"
        assert torch.equal(clipfast.preprocess_batch(encoded, threads=1), expected), "not exact"

        pair = timed_pair(
            lambda images=images: [_REFERENCE(im) for im in images],
            lambda images=images: [pre(im) for im in images],
            repeats,
        )
        add(f"{name}, decoded, 1 core", len(images), pair)

        pair = timed_pair(
            lambda encoded=encoded: [clip_from_bytes(b) for b in encoded],
            lambda encoded=encoded: clipfast.preprocess_batch(encoded, threads=1),
            repeats,
        )
        add(f"{name}, JPEG bytes (exact), 1 core", len(encoded), pair)

        pair = timed_pair(
            lambda encoded=encoded: [clip_from_bytes(b) for b in encoded],
            lambda encoded=encoded: clipfast.preprocess_batch(encoded, threads=1, decode="fast"),
            repeats,
        )
        add(f"{name}, JPEG bytes (fast), 1 core", len(encoded), pair)

        if name.startswith("photos (tests"):
            # The same photos as PNG files (Pillow's default compression): decoded in Rust, exactly.
            pngs = [png_bytes(im) for im in images]
            assert torch.equal(clipfast.preprocess_batch(pngs, threads=1), expected), "not exact"
            pair = timed_pair(
                lambda pngs=pngs: [clip_from_bytes(b) for b in pngs],
                lambda pngs=pngs: clipfast.preprocess_batch(pngs, threads=1),
                repeats,
            )
            add(f"{name}, PNG bytes (exact), 1 core", len(pngs), pair)

        if cores > 1:
            batch = encoded * max(1, (4 * cores) // len(encoded))
            with ProcessPoolExecutor(cores, mp_context=get_context("fork"), initializer=_init_worker) as pool:
                list(pool.map(clip_from_bytes, batch[:cores]))  # start the workers
                pair = timed_pair(
                    lambda batch=batch, pool=pool: list(pool.map(clip_from_bytes, batch)),
                    lambda batch=batch: clipfast.preprocess_batch(batch, threads=cores),
                    repeats,
                )
            add(f"{name}, JPEG bytes (exact), {cores} cores", len(batch), pair)
            # Scaling of clipfast itself on a DataLoader-sized batch of decoded images.
            decoded = [decode(encoded[i % len(encoded)]) for i in range(SCALING_BATCH)]
            pair = timed_pair(
                lambda d=decoded: clipfast.preprocess_batch(d, threads=1),
                lambda d=decoded: clipfast.preprocess_batch(d, threads=cores),
                repeats,
            )
            machine_pair = memory_scaling(cores, repeats)
            print(
                f"{'':45s} clipfast decoded: {cores} cores / 1 core = x{pair.ratio:.2f}"
                f" ({pair.low:.2f}-{pair.high:.2f}); memory copies x{machine_pair.ratio:.2f}"
                f" ({machine_pair.low:.2f}-{machine_pair.high:.2f})"
            )
            rows[-1]["clipfast_decoded_scaling"] = pair.ratio
            rows[-1]["clipfast_decoded_scaling_range"] = [pair.low, pair.high]
            rows[-1]["memory_copy_scaling"] = machine_pair.ratio
            rows[-1]["memory_copy_scaling_range"] = [machine_pair.low, machine_pair.high]
            scaling.append((name, pair, machine_pair))

    RESULTS.mkdir(parents=True, exist_ok=True)
    head = (
        f"Preprocessing to 3x{N_PX}x{N_PX} float32, images per second (median of {repeats}; speed-up: "
        f"median of the per-round ratios, their lowest-highest in brackets); {machine()}"
    )
    table = [
        head,
        "",
        "| case | clip (PIL + torchvision) | clipfast | speed-up |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['case']} | {r['reference_img_s']:.1f} | {r['clipfast_img_s']:.1f} | "
            f"{r['ratio']:.1f}x ({r['ratio_range'][0]:.1f}-{r['ratio_range'][1]:.1f}) |"
            for r in rows
        ),
    ]
    if scaling:
        table += [
            "",
            f"clipfast on {SCALING_BATCH} decoded images, {cores} threads vs 1 (median of {repeats} "
            "interleaved rounds, lowest-highest), and right after it the machine's own speed-up on "
            f"memory copies ({cores} x 64 MiB, {cores} threads vs 1):",
            "",
            *(
                f"- {name}: {p.ratio:.2f}x ({p.low:.2f}-{p.high:.2f}); memory copies "
                f"{m.ratio:.2f}x ({m.low:.2f}-{m.high:.2f})"
                for name, p, m in scaling
            ),
        ]
    (RESULTS / "preprocess.md").write_text("\n".join(table) + "\n")
    (RESULTS / "preprocess.json").write_text(json.dumps({"rows": rows, "machine": machine()}, indent=2))
    print(f"wrote {RESULTS / 'preprocess.md'}")


if __name__ == "__main__":
    main()
