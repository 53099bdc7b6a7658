"""Benchmark: clipfast.tokenize vs clip.tokenize on 10,000 generated captions, identical output asserted.

Usage: python benches/bench_tokenize.py [--quick]
Writes benches/results/tokenize.md and benches/results/tokenize.json (see benches/README.md).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import clipfast
import torch
from _machine import machine

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

RESULTS = Path(__file__).resolve().parent / "results"

SUBJECTS = [
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "group of people",
    "car",
    "red bus",
    "bicycle",
    "horse",
    "bird",
    "plate of food",
    "pizza",
    "laptop",
    "train",
    "boat",
    "giraffe",
    "zebra",
    "kitchen",
    "living room",
    "street sign",
    "clock tower",
    "surfer",
    "skateboarder",
]
ACTIONS = [
    "sitting on",
    "standing next to",
    "riding",
    "walking along",
    "looking at",
    "holding",
    "parked near",
    "eating",
    "playing with",
    "lying on",
    "jumping over",
    "flying above",
]
PLACES = [
    "a wooden bench",
    "the beach",
    "a busy street",
    "a grassy field",
    "the kitchen counter",
    "a snowy mountain",
    "the river",
    "a city park",
    "an old building",
    "the table",
    "the water",
]
ADJECTIVES = ["small", "large", "white", "black", "brown", "young", "old", "bright", "colorful", "two"]
NON_ASCII = [
    "café",
    "crème brûlée",
    "東京タワー",
    "一只猫",
    "고양이",
    "Кошка",
    "🐶",
    "🎉",
    "it’s",
    "“nice”",
    "&amp;",
    "naïve",
    "São Paulo",
    "Zürich",
    "piñata",
    "façade",
    "ﬁsh",
    "Ã©tÃ©",
]


def captions(count: int, non_ascii_share: float, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = (
            f"{rng.choice(['A', 'The', 'a', 'An image of a', 'Photo of a'])} {rng.choice(ADJECTIVES)} "
            f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}"
        )
        if rng.random() < 0.4:
            text += f" with a {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)}"
        if rng.random() < non_ascii_share:
            words = text.split()
            words.insert(rng.randrange(len(words) + 1), rng.choice(NON_ASCII))
            text = " ".join(words)
        out.append(text + rng.choice([".", "", "!", " ."]))
    return out


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small, fast run that checks the script")
    args = parser.parse_args()
    count, repeats = (1000, 1) if args.quick else (10_000, 5)

    cases = [
        (f"{count:,} captions, 10% non-ASCII", captions(count, 0.10)),
        (f"{count:,} captions, ASCII only", captions(count, 0.0, seed=1)),
        (f"{count // 10:,} captions, all non-ASCII", captions(count // 10, 1.0, seed=2)),
    ]
    rows = []
    for case, texts in cases:
        expected = clip.tokenize(texts)  # also warms clip's word cache, as clipfast's is warmed below
        got = clipfast.tokenize(texts)
        assert got.dtype == torch.int32
        assert torch.equal(got.long(), expected), f"{case}: clipfast differs from clip"
        reference = median_time(lambda texts=texts: clip.tokenize(texts), repeats)
        ours = median_time(lambda texts=texts: clipfast.tokenize(texts), max(repeats, 5))
        rows.append({"case": case, "reference_s": reference, "clipfast_s": ours, "ratio": reference / ours})
        print(f"{case}: clip {reference * 1e3:.1f} ms, clipfast {ours * 1e3:.2f} ms, {reference / ours:.1f}x")

    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    name = machine()
    lines = [
        f"tokenize, median of {repeats} runs, identical ids asserted ({name})",
        "",
        "| case | clip.tokenize | clipfast.tokenize | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        reference_ms, clipfast_ms = r["reference_s"] * 1e3, r["clipfast_s"] * 1e3
        lines.append(f"| {r['case']} | {reference_ms:.1f} ms | {clipfast_ms:.2f} ms | {r['ratio']:.1f}x |")
    (RESULTS / "tokenize.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "tokenize.json").write_text(json.dumps({"rows": rows, "machine": name}, indent=2) + "\n")


if __name__ == "__main__":
    main()
