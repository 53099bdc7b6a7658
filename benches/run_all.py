"""``make bench``: run every ``benches/bench_*.py`` one after another, then update the README.

Each benchmark writes ``benches/results/<name>.md`` and ``<name>.json`` (see benches/README.md). This
script then puts each table into README.md between ``<!-- bench:<name> -->`` and
``<!-- /bench:<name> -->`` (where those markers are present) and draws ``benches/results/summary.png``.

    python benches/run_all.py [--quick] [--only load,image]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"
RESULTS = BENCHES / "results"
README = ROOT / "README.md"


def run_benchmarks(quick: bool, only: set[str] | None) -> list[str]:
    """Run the scripts one at a time (so they do not disturb each other); returns those that failed."""
    failed = []
    for script in sorted(BENCHES.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if only is not None and name not in only:
            continue
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(
            [sys.executable, str(script), *(["--quick"] if quick else [])], cwd=ROOT
        ).returncode
        print(f"== {script.name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(script.name)
    return failed


def splice_readme(readme: Path = README, results: Path = RESULTS) -> list[str]:
    """Replace the text between each pair of bench markers with that benchmark's table; returns the
    names spliced. A table without markers in the README is left out (and reported)."""
    if not readme.is_file():
        return []
    text = readme.read_text()
    spliced = []
    for table in sorted(results.glob("*.md")):
        name = table.stem
        pattern = re.compile(
            rf"(<!-- bench:{re.escape(name)} -->\n?)(.*?)(<!-- /bench:{re.escape(name)} -->)", re.DOTALL
        )
        body = table.read_text().rstrip("\n") + "\n"
        text, count = pattern.subn(lambda m, body=body: m.group(1) + body + m.group(3), text)
        if count:
            spliced.append(name)
        else:
            print(f"README.md has no <!-- bench:{name} --> markers; {table.name} not spliced")
    readme.write_text(text)
    return spliced


def summary_rows(results: Path = RESULTS) -> list[tuple[str, float, float]]:
    """(label, reference seconds, clipfast seconds) for every row of every result file."""
    rows = []
    for path in sorted(results.glob("*.json")):
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for row in data.get("rows", []):
            try:
                rows.append(
                    (f"{path.stem}: {row['case']}", float(row["reference_s"]), float(row["clipfast_s"]))
                )
            except (KeyError, TypeError, ValueError):
                continue
    return rows


def plot(results: Path = RESULTS) -> Path | None:
    """The speed-up over the reference (reference time / clipfast time) of every benchmark row."""
    rows = [(label, ref / ours) for label, ref, ours in summary_rows(results) if ours > 0]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 1.0 + 0.45 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    speedups = [r[1] for r in rows]
    ax.barh(ys, speedups, color=["#1f77b4" if x >= 1 else "#d62728" for x in speedups])
    for y, x in zip(ys, speedups):
        ax.annotate(f" {x:.1f}x", (x, y), va="center", fontsize=8)
    ax.axvline(1.0, color="#555555", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(speedups) / 1.5), max(speedups) * 1.8)  # room for the labels
    ax.set_xlabel("speed-up over the reference (median times, log scale)")
    ax.set_title("clipfast vs the reference")
    fig.tight_layout()
    out = results / "summary.png"
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (bench_<name>.py)")
    args = parser.parse_args(argv)
    only = {n.strip() for n in args.only.split(",")} if args.only else None
    failed = run_benchmarks(args.quick, only)
    RESULTS.mkdir(parents=True, exist_ok=True)
    spliced = splice_readme()
    png = plot()
    print(f"README tables updated: {', '.join(spliced) or 'none'}; plot: {png or 'no results'}")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
