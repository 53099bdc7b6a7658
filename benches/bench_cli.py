"""The ``clipfast`` command's wall time: list, download (cached), verify and inspect, each in a fresh
process, against the same command with torch imported first (what ``import clipfast`` cost before it
became lazy) and against the command's own I/O and hashing.

- now:     ``python -m clipfast <command>`` (torch is never imported; tests/test_cli_torch_free.py)
- before:  the same ``main(argv)`` after ``import clipfast.load, clipfast.transforms`` (torch, numpy
           and Pillow: what ``import clipfast`` imported until the package became lazy)
- I/O:     the work the command cannot avoid, timed in a warm process: SHA-256 of the file
           (verify, inspect without a record) and reading its layout (inspect); list and download
           of a recorded file only stat a few files
- startup: ``python -c pass``, the interpreter alone

The overhead is the median wall time minus the I/O; the target (issue 16) is <= 0.15 s.
Runs are interleaved (now, before, now, before, ...) so that a busy moment hits both.
Page cache warm (the file is read once first). The file is the full-size ViT-B/32 of bench_load.

    python benches/bench_cli.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine
from bench_load import ROOT, child_env, ensure_checkpoints, warm

RESULTS = ROOT / "benches" / "results"
TARGET_S = 0.15

NOW = [sys.executable, "-m", "clipfast"]
BEFORE = [
    sys.executable,
    "-c",
    "import sys, clipfast.load, clipfast.transforms\n"
    "from clipfast.cli import main\n"
    "sys.exit(main(sys.argv[1:]))",
]


def wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def io_seconds(kind: str, path: Path, repeats: int) -> float:
    """Median time of the command's own unavoidable work, in a warm process."""
    if kind == "none":
        return 0.0
    code = (
        "import json, sys, time\n"
        "from clipfast import cache, checkpoint\n"
        "kind, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "times = []\n"
        "for _ in range(n):\n"
        "    t0 = time.perf_counter()\n"
        "    cache.hash_file(path)\n"
        "    if kind == 'hash+layout':\n"
        "        checkpoint.inspect_checkpoint(path)\n"
        "    times.append(time.perf_counter() - t0)\n"
        "times.sort()\n"
        "print(json.dumps(times[len(times) // 2]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, kind, str(path), str(repeats)],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per command (default 9)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)

    sys.path.insert(0, str(ROOT / "python"))
    from clipfast import cache
    from clipfast.registry import MODELS, sha256_of_url

    where = machine()
    print(f"bench_cli: {where}", flush=True)
    archive, _ = ensure_checkpoints("ViT-B/32")
    warm(archive)
    size = archive.stat().st_size
    sha = cache.hash_file(archive)

    with tempfile.TemporaryDirectory() as tmp:
        env = child_env()
        env["XDG_CACHE_HOME"] = os.path.join(tmp, "xdg")
        for key in ("CLIPFAST_OFFLINE", "CLIPFAST_MIRROR"):
            env.pop(key, None)
        root = Path(tmp) / "root"
        root.mkdir()
        # A cached official file its record vouches for: `download` must only find it.
        official = root / "ViT-B-32.pt"
        official.write_bytes(b"stands in for the cached file")
        official_sha = sha256_of_url(MODELS["ViT-B/32"])
        assert official_sha is not None
        cache.write_record(official, official_sha)
        inspected = archive  # its record is removed before each inspect: it hashes, as on first use
        mib = f"{size / 2**20:.0f} MiB"
        cases: list[tuple[str, list[str], str, Path]] = [
            ("list", ["list", "--root", str(root)], "none", archive),
            (
                "download ViT-B/32 (cached, recorded)",
                ["download", "ViT-B/32", "--root", str(root)],
                "none",
                archive,
            ),
            (f"verify a {mib} file", ["verify", str(archive), "--sha256", sha], "hash", archive),
            (
                f"inspect a {mib} file (no record: hashes it)",
                ["inspect", str(inspected)],
                "hash+layout",
                archive,
            ),
        ]
        startup = []
        samples: dict[str, tuple[list[float], list[float]]] = {c[0]: ([], []) for c in cases}
        for r in range(repeats):
            startup.append(wall([sys.executable, "-c", "pass"], env))
            for case, command, _, _ in cases:
                if "inspect" in case:
                    cache.forget(inspected)
                samples[case][0].append(wall(NOW + command, env))
                if "inspect" in case:
                    cache.forget(inspected)
                samples[case][1].append(wall(BEFORE + command, env))
            print(f"  repeat {r + 1}/{repeats} done", flush=True)

        rows: list[dict[str, Any]] = []
        for case, _, io_kind, path in cases:
            now, before = samples[case]
            io = io_seconds(io_kind, path, 5)
            over = [t - io for t in now]
            rows.append(
                {
                    "case": f"clipfast {case}",
                    "reference_s": statistics.median(before),
                    "clipfast_s": statistics.median(now),
                    "ratio": statistics.median(before) / statistics.median(now),
                    "now_range_s": [min(now), max(now)],
                    "before_range_s": [min(before), max(before)],
                    "io_s": io,
                    "overhead_s": statistics.median(over),
                    "target_met": statistics.median(over) <= TARGET_S,
                }
            )
    start = statistics.median(startup)
    lines = [
        f"The `clipfast` command in a fresh process, median of {repeats} (interleaved), page cache warm. "
        f"Machine: {where}.",
        "",
        "| command | before: torch imported | **now** | own I/O + hashing | now − I/O (target ≤ 0.15 s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        ok = "" if row["target_met"] else " (NOT met)"
        lines.append(
            f"| `{row['case']}` | {row['reference_s']:.3f} s | **{row['clipfast_s']:.3f} s** "
            f"| {row['io_s']:.3f} s | {row['overhead_s']:.3f} s{ok} |"
        )
    lines += [
        "",
        f"`python -c pass` alone takes {start:.3f} s here (included in every figure). Before: the same "
        "command after importing what `import clipfast` imported before it became lazy "
        "(torch, numpy, Pillow).",
    ]
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cli.md").write_text(table)
    payload = {"machine": where, "rows": rows, "startup_s": start}
    (RESULTS / "cli.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
