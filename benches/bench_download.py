"""Cached-model resolution and SHA-256 throughput: clipfast vs openai/CLIP and hashlib.

1. Resolving an already cached model file, as every ``load`` does first:
   - clip:      ``clip.clip._download(url, root)`` (reads the whole file and hashes it on every call)
   - clipfast:  ``clipfast.download(url, root)`` (trusts the verified-cache record: no hashing)
   - clipfast --verify: ``resolve``-style forced re-hash (what ``verify=True`` costs)
   Files of ViT-B/32's and ViT-L/14's size (~338 MB, ~890 MB) with random bytes, named by their own
   SHA-256 in the URL path as the official URLs are; nothing is served (both return the cached file
   when the hash matches). Page cache warm; medians of interleaved repeats, in one process.
2. SHA-256 throughput (MB/s): ``hashlib.sha256`` vs ``clipfast._native.Sha256`` on one in-memory buffer,
   and ``hashlib.file_digest`` vs ``clipfast._native.sha256_file`` on a cached file.

    python benches/bench_download.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
CACHE = ROOT / "benches" / ".cache" / "download"
RESULTS = ROOT / "benches" / "results"
MB = 1_000_000

# name -> size in bytes (the official files are about this large)
FULL_SIZES = {"ViT-B/32": 338 * MB, "ViT-L/14": 890 * MB}
QUICK_SIZES = {"ViT-B/32": 24 * MB, "ViT-L/14": 48 * MB}


def ensure_file(name: str, size: int) -> tuple[Path, str]:
    """A file of random bytes named as the official one, and its SHA-256 (made once)."""
    folder = CACHE / f"{size}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name.replace("/", "-").replace("@", "-") + ".pt")
    sha_file = path.with_suffix(".sha256")
    if not (path.exists() and sha_file.exists() and path.stat().st_size == size):
        h = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 16 * MB))
                h.update(block)
                f.write(block)
                left -= len(block)
        sha_file.write_text(h.hexdigest())
    return path, sha_file.read_text().strip()


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 * MB):
            pass


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_resolution(name: str, size: int, repeats: int) -> list[dict[str, Any]]:
    import clip.clip
    import clipfast
    from clipfast import cache

    path, sha = ensure_file(name, size)
    url = f"https://openaipublic.azureedge.net/clip/models/{sha}/{path.name}"
    root = str(path.parent)
    warm(path)
    assert clip.clip._download(url, root) == str(path)
    cache.forget(path)
    first = timed(lambda: clipfast.download(url, root=root, progress=False))  # hashes once, records
    times: dict[str, list[float]] = {"clip": [], "clipfast": [], "verify": []}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all alike
        times["clip"].append(timed(lambda: clip.clip._download(url, root)))
        times["clipfast"].append(timed(lambda: clipfast.download(url, root=root, progress=False)))
        times["verify"].append(timed(lambda: cache.verify_file(path, sha, force=True)))
    med = {k: statistics.median(v) for k, v in times.items()}
    label = f"{name} ({size / MB:.0f} MB)"
    return [
        {
            "case": f"cached {label}: resolve",
            "reference_s": med["clip"],
            "clipfast_s": med["clipfast"],
            "ratio": med["clip"] / med["clipfast"],
            "reference": "clip._download (re-hash)",
            "clipfast": "verified-cache record",
        },
        {
            "case": f"cached {label}: forced re-hash",
            "reference_s": med["clip"],
            "clipfast_s": med["verify"],
            "ratio": med["clip"] / med["verify"],
            "reference": "clip._download (re-hash)",
            "clipfast": "verify=True",
            "first_check_s": first,
        },
    ]


def bench_hash(size: int, repeats: int, file_path: Path) -> list[dict[str, Any]]:
    from clipfast import _native

    def in_memory() -> dict[str, list[float]]:
        data = os.urandom(size)
        assert _native.Sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        runs: dict[str, list[float]] = {"hashlib": [], "clipfast": []}
        for _ in range(repeats):
            runs["hashlib"].append(timed(lambda: hashlib.sha256(data).digest()))
            runs["clipfast"].append(timed(lambda: _native.Sha256(data).digest()))
        return runs

    mem = in_memory()
    n = file_path.stat().st_size
    warm(file_path)

    def hashlib_file() -> str:
        with open(file_path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    disk: dict[str, list[float]] = {"hashlib": [], "clipfast": []}
    for _ in range(repeats):
        disk["hashlib"].append(timed(hashlib_file))
        disk["clipfast"].append(timed(lambda: _native.sha256_file(file_path)))
    rows = []
    for case, runs, nbytes in (
        (f"SHA-256 of {size / MB:.0f} MB in memory", mem, size),
        (f"SHA-256 of a cached {n / MB:.0f} MB file", disk, n),
    ):
        ref, ours = statistics.median(runs["hashlib"]), statistics.median(runs["clipfast"])
        rows.append(
            {
                "case": case,
                "reference_s": ref,
                "clipfast_s": ours,
                "ratio": ref / ours,
                "reference": "hashlib",
                "clipfast": "clipfast (Rust, sha2)",
                "reference_mb_s": nbytes / ref / MB,
                "clipfast_mb_s": nbytes / ours / MB,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], where: str, repeats: int) -> str:
    lines = [
        f"Download cache and hashing, medians of {repeats} runs on {where}",
        "",
        "| case | reference | clipfast | reference s | clipfast s | speed-up |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        ref, ours = f"{r['reference_s']:.4f}", f"{r['clipfast_s']:.4f}"
        if "reference_mb_s" in r:
            ref += f" ({r['reference_mb_s']:.0f} MB/s)"
            ours += f" ({r['clipfast_mb_s']:.0f} MB/s)"
        lines.append(
            f"| {r['case']} | {r['reference']} | {r['clipfast']} | {ref} | {ours} | {r['ratio']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small files, few repeats (checks the script)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (3 if args.quick else 5)
    # The verified-cache records of these files go beside them; nothing touches ~/.cache.
    os.environ["CLIPFAST_OFFLINE"] = "1"
    rows: list[dict[str, Any]] = []
    for name, size in sizes.items():
        rows += bench_resolution(name, size, repeats)
    rows += bench_hash(
        64 * MB if args.quick else 256 * MB, repeats, ensure_file("ViT-B/32", sizes["ViT-B/32"])[0]
    )
    where = machine()
    table = markdown(rows, where, repeats)
    print(table)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "download.md").write_text(table)
        (RESULTS / "download.json").write_text(json.dumps({"machine": where, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
