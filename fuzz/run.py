"""`make fuzz`: run every fuzz target with a time budget and a plateau rule, keep the minimised
corpora, turn every crash into a regression input, and report executions and coverage.

    .venv/bin/python fuzz/run.py [--budget 600] [--plateau 180] [--targets zip,png] [--no-atheris]

- The cargo-fuzz targets (fuzz/fuzz_targets/, entry points in rust/fuzzing.rs) run under
  libFuzzer with coverage guidance. With a nightly toolchain they are built with AddressSanitizer
  (and LeakSanitizer); without one, on stable with `-s none` (no sanitizer). The report says
  which ran.
- Each target starts from its committed corpus (fuzz/corpus/<t>) and seeds (fuzz/seeds/<t>),
  stops after `--budget` seconds or `--plateau` seconds without new coverage, then its corpus is
  minimised (libFuzzer's -merge) and written back to fuzz/corpus/<t>.
- A crash, hang (-timeout), leak or out-of-memory (-rss_limit_mb / -malloc_limit_mb) leaves its
  input in fuzz/regressions/<t>/ (replayed by `cargo test`) and fails the run.
- The Python targets run after them under the same budget rule (atheris): the differential ones
  (fuzz/differential.py, against Pillow and openai/CLIP through the reference pipeline) and the
  configuration / shard-index parsers (fuzz/configs.py).
- Results: fuzz/results.json, and the README's Security model table between its fuzz markers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

#: target -> -max_len (bytes): large enough for the seeds and their interesting variants.
TARGETS = {
    "checkpoint": 16384,
    "zip": 16384,
    "pickle": 8192,
    "torchscript": 16384,
    "safetensors": 4096,
    "npz": 8192,
    "png": 16384,
    "jpeg": 16384,
    "resize": 4096,
    "tokenizer": 2048,
    "http": 1024,
}
#: Python targets (atheris): name -> (script, seeds folder, -max_len).
ATHERIS = {
    "png_vs_pillow": ("differential.py", "png", 16384),
    "jpeg_vs_pillow": ("differential.py", "jpeg", 16384),
    "tokenizer_vs_clip": ("differential.py", "tokenizer", 1024),
    "hf_config": ("configs.py", "hf_config", 8192),
    "hf_index": ("configs.py", "hf_index", 4096),
    "openclip_config": ("configs.py", "openclip_config", 8192),
    "webdataset_tar": ("configs.py", "webdataset_tar", 16384),
}
PROGRESS = re.compile(r"^#(\d+)\s+(?:NEW|REDUCE|pulse|INITED|DONE)\b.*?cov: (\d+) ft: (\d+)")


def toolchain() -> tuple[list[str], str]:
    """The cargo fuzz command and the sanitizer it uses: nightly + ASan when there is a nightly."""
    nightly = subprocess.run(
        ["rustup", "run", "nightly", "rustc", "--version"], capture_output=True, text=True
    )
    if nightly.returncode == 0:
        return [
            "cargo",
            "+nightly",
            "fuzz",
        ], f"address (AddressSanitizer + LeakSanitizer), {nightly.stdout.strip()}"
    return ["cargo", "fuzz"], "none (stable toolchain: no nightly for sanitizers)"


def ensure_cargo_fuzz() -> None:
    if subprocess.run(["cargo", "fuzz", "--version"], capture_output=True).returncode != 0:
        subprocess.run(["cargo", "install", "cargo-fuzz", "--locked"], check=True)


def build(fuzz: list[str], sanitizer: str) -> Path:
    env = dict(os.environ, PYO3_PYTHON=str(ROOT / ".venv/bin/python"))
    args = [*fuzz, "build", "-O"]
    if sanitizer.startswith("none"):
        args += ["-s", "none"]
    subprocess.run(args, cwd=HERE, env=env, check=True)
    triple = subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout
    host = re.search(r"host: (\S+)", triple)
    return HERE / "target" / (host.group(1) if host else "x86_64-unknown-linux-gnu") / "release"


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def run_one(cmd: list[str], budget: float, plateau: float, log: Path, env: dict[str, str]) -> dict:
    """Runs one fuzzer until the budget or the plateau; returns its progress and final stats."""
    start = time.monotonic()
    last_gain = start
    best = (0, 0)
    execs = 0
    stats: dict[str, str] = {}
    lines: queue.Queue[str | None] = queue.Queue()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=out, text=True, errors="replace", env=env)
        assert proc.stderr is not None
        stream = proc.stderr

        def pump() -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        stopped = None
        started = False
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                break
            out.write(line)
            m = PROGRESS.match(line)
            if m:
                if not started:  # the plateau clock starts once the fuzzer runs (imports can be slow)
                    started = True
                    last_gain = time.monotonic()
                execs = int(m.group(1))
                cov = (int(m.group(2)), int(m.group(3)))
                if cov > best:
                    best = cov
                    last_gain = time.monotonic()
            if line.startswith("stat::"):
                key, _, value = line[len("stat::") :].partition(":")
                stats[key.strip()] = value.strip()
            now = time.monotonic()
            if stopped is None and (now - last_gain > plateau or now - start > budget):
                stopped = "plateau" if now - last_gain > plateau else "budget"
                proc.send_signal(signal.SIGINT)  # libFuzzer prints its final stats and exits
            elif stopped is not None and now - start > budget + 120:
                proc.kill()
        proc.wait()
    if stopped is None:
        stopped = "budget" if proc.returncode == 0 else f"exit {proc.returncode}"
    return {
        "seconds": round(time.monotonic() - start, 1),
        "stopped_by": stopped,
        "executions": int(stats.get("number_of_executed_units", execs)),
        "coverage_edges": best[0],
        "features": best[1],
        "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
        "returncode": proc.returncode,
    }


def collect_findings(target: str, artifacts: Path) -> list[str]:
    """Moves crash/timeout/leak/oom inputs into fuzz/regressions/<target>/ (replayed by cargo test)."""
    found = []
    if not artifacts.exists():
        return found
    dest = HERE / "regressions" / target
    for path in sorted(artifacts.iterdir()):
        kind = path.name.split("-")[0]
        if kind not in ("crash", "timeout", "leak", "oom", "slow"):
            continue
        data = path.read_bytes()
        dest.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{digest(data)[:16]}"
        (dest / name).write_bytes(data)
        found.append(name)
        path.unlink()
    return found


def minimise(binary: Path, target: str, sources: list[Path], max_len: int, env: dict[str, str]) -> int:
    """libFuzzer's set-cover merge of `sources` into a fresh fuzz/corpus/<target>: the fewest files
    that reach every edge the run reached (edges, not hit counts, to keep it small); files equal
    to seeds are dropped (the seeds are committed beside it). Returns the corpus size."""
    merged = HERE / "work" / f"{target}.merged"
    shutil.rmtree(merged, ignore_errors=True)
    merged.mkdir(parents=True)
    subprocess.run(
        [
            str(binary),
            "-set_cover_merge=1",
            "-use_counters=0",
            f"-max_len={max_len}",
            "-timeout=30",
            str(merged),
            *map(str, sources),
        ],
        capture_output=True,
        env=env,
    )
    seeds = {digest(p.read_bytes()) for p in (HERE / "seeds" / target).glob("*")}
    corpus = HERE / "corpus" / target
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    for path in merged.iterdir():
        data = path.read_bytes()
        if digest(data) not in seeds:
            (corpus / digest(data)[:16]).write_bytes(data)
    shutil.rmtree(merged)
    return sum(1 for _ in corpus.iterdir())


def working_dirs(target: str) -> tuple[Path, Path]:
    """A fresh working corpus for ``target`` (a copy of its committed one, which the fuzzer grows)
    and the folder its findings go to."""
    work = HERE / "work" / target
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    committed = HERE / "corpus" / target
    if committed.exists():
        for path in committed.iterdir():
            shutil.copy(path, work / path.name)
    artifacts = HERE / "artifacts" / target
    artifacts.mkdir(parents=True, exist_ok=True)
    return work, artifacts


def fuzz_rust(args: argparse.Namespace, results: dict) -> bool:
    if args.targets and not set(args.targets) & set(TARGETS):
        return True  # only Python targets asked for: nothing to build
    ensure_cargo_fuzz()
    fuzz, sanitizer = toolchain()
    results["sanitizer"] = sanitizer
    bindir = build(fuzz, sanitizer)
    ok = True
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1")
    for target, max_len in TARGETS.items():
        if args.targets and target not in args.targets:
            continue
        work, artifacts = working_dirs(target)
        binary = bindir / target
        cmd = [
            str(binary),
            str(work),
            str(HERE / "seeds" / target),
            f"-max_len={max_len}",
            "-timeout=10",
            "-rss_limit_mb=2560",
            "-malloc_limit_mb=1024",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            f"-max_total_time={int(args.budget) + 60}",
        ]
        print(f"fuzz {target}: up to {args.budget:.0f} s, plateau {args.plateau:.0f} s", flush=True)
        result = run_one(cmd, args.budget, args.plateau, HERE / "work" / f"{target}.log", env)
        result["findings"] = collect_findings(target, artifacts)
        result["corpus_files"] = minimise(binary, target, [work, HERE / "seeds" / target], max_len, env)
        ok = record(results, target, result, args, max_len) and ok
    return ok


def record(results: dict, target: str, result: dict, args: argparse.Namespace, max_len: int) -> bool:
    """Puts one target's run (with the settings it ran under) into the report; True without findings."""
    result["max_len"] = max_len
    result["budget"] = args.budget
    result["plateau"] = args.plateau
    result["date"] = results["date"]
    results["targets"][target] = result
    print(f"  {json.dumps(result)}", flush=True)
    return not result["findings"]


def fuzz_atheris(args: argparse.Namespace, results: dict) -> bool:
    ok = True
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    for target, (script, seed_folder, max_len) in ATHERIS.items():
        if args.targets and target not in args.targets:
            continue
        work, artifacts = working_dirs(target)
        seeds = HERE / "seeds" / seed_folder
        cmd = [
            PY,
            str(HERE / script),
            target,
            str(work),
            str(seeds),
            f"-max_len={max_len}",
            "-timeout=30",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            f"-max_total_time={int(args.budget) + 60}",
        ]
        print(f"differential {target}: up to {args.budget:.0f} s, plateau {args.plateau:.0f} s", flush=True)
        result = run_one(cmd, args.budget, args.plateau, HERE / "work" / f"{target}.log", env)
        result["findings"] = collect_findings(target, artifacts)
        corpus = HERE / "corpus" / target
        shutil.rmtree(corpus, ignore_errors=True)
        corpus.mkdir(parents=True)
        seed_digests = {digest(p.read_bytes()) for p in seeds.glob("*")}
        kept = sorted(work.iterdir(), key=lambda p: p.stat().st_size)[: args.keep]
        for path in kept:
            data = path.read_bytes()
            if digest(data) not in seed_digests:
                (corpus / digest(data)[:16]).write_bytes(data)
        result["corpus_files"] = sum(1 for _ in corpus.iterdir())
        ok = record(results, target, result, args, max_len) and ok
    return ok


def run_sweeps(args: argparse.Namespace, results: dict) -> bool:
    """The full truncation and bit-flip sweeps (fuzz/sweeps.py); their counts go in the report."""
    out = HERE / "work" / "sweeps.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS="1")
    cmd = [
        PY,
        str(HERE / "sweeps.py"),
        "--stride",
        str(args.sweep_stride),
        "--flip-stride",
        "1",
        "--json",
        str(out),
    ]
    print(f"sweeps: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, env=env, capture_output=True, timeout=6 * 3600)
    report = json.loads(out.read_text()) if out.exists() else {"ok": False, "failure": "no report"}
    results["sweeps"] = report
    counts = f"truncations={report.get('truncation_total')} flips={report.get('bit_flip_total')}"
    print(f"  ok={report.get('ok')} {counts}", flush=True)
    return bool(report.get("ok"))


# fuzz/sweeps.py's outcomes of a bit flip, as the README says them.
_OUTCOMES = {
    "error": "typed errors",
    "same": "the original tensors",
    "one": "one tensor's bytes differ",
    "same model": "read differently, the same model",
}


def _every(n: int) -> str:
    return "every" if n == 1 else f"every {n}th"


def write_readme(results: dict) -> None:
    rows = [
        "| target | executions | coverage (edges / features) | stopped by | time | corpus files | findings |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for name, r in results["targets"].items():
        # A finding stays a regression input (fuzz/regressions/), replayed by make test, which
        # passes only once it is fixed.
        findings = ", ".join(f"{f} (fixed, replayed)" for f in r["findings"]) or "none"
        rows.append(
            f"| {name} | {r['executions']:,} | {r['coverage_edges']:,} / {r['features']:,} | "
            f"{r['stopped_by']} | {r['seconds']:.0f} s | {r['corpus_files']} | {findings} |"
        )
    sanitizer = results.get("sanitizer", "n/a")
    # Targets rerun alone (--targets) keep their own budget; the others keep the earlier run's.
    budgets = sorted({r.get("budget", results["budget"]) for r in results["targets"].values()})
    budget = " / ".join(f"{b:.0f}" for b in budgets)
    plateaus = sorted({r.get("plateau", results["plateau"]) for r in results["targets"].values()})
    plateau = " / ".join(f"{p:.0f}" for p in plateaus)
    dates = sorted({r.get("date", results["date"]) for r in results["targets"].values()})
    intro = (
        f"`make fuzz` on {results['machine']}, {' and '.join(dates)}: budget {budget} s "
        f"per target, stopped after {plateau} s without new coverage; sanitizer: "
        f"{sanitizer} (the Rust targets; the differential targets run under atheris with coverage of "
        "the Python side, the extension and libjpeg uninstrumented)."
    )
    sweeps = results.get("sweeps") or {}
    lines = [intro, "", *rows]
    if sweeps:
        flips = sweeps.get("bit_flips", {})
        outcome = Counter()
        for counts in flips.values():
            outcome.update(counts)
        flips_text = ", ".join(f"{v:,} {_OUTCOMES.get(k, k)}" for k, v in sorted(outcome.items()))
        lines += [
            "",
            f"Sweeps (fuzz/sweeps.py, {sweeps.get('seconds', 0):.0f} s; every "
            f"{sweeps.get('stride', 16)}th prefix and every length near the ends, a flip in "
            f"{_every(sweeps.get('flip_stride', 1))} header byte): "
            f"{sweeps.get('truncation_total', 0):,} truncation points of "
            f"{len(sweeps.get('truncation_points', {}))} files (5 checkpoint formats, 9 image formats), "
            f"{sweeps.get('bit_flip_total', 0):,} single bit flips across zip headers, pickles and "
            f"safetensors headers ({flips_text}); "
            f"{'all as required' if sweeps.get('ok') else 'FAILED: ' + str(sweeps.get('failure'))}.",
        ]
    text = "\n".join(lines)
    readme = ROOT / "README.md"
    body = readme.read_text()
    start, end = "<!-- fuzz:results -->", "<!-- /fuzz:results -->"
    if start in body and end in body:
        head, _, rest = body.partition(start)
        _, _, tail = rest.partition(end)
        readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=float(os.environ.get("FUZZ_BUDGET", 600)))
    parser.add_argument("--plateau", type=float, default=float(os.environ.get("FUZZ_PLATEAU", 180)))
    parser.add_argument("--targets", type=lambda s: [t for t in s.split(",") if t], default=None)
    parser.add_argument("--no-atheris", action="store_true")
    parser.add_argument("--keep", type=int, default=64, help="corpus files kept per differential target")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--no-sweeps", action="store_true")
    parser.add_argument("--readme-only", action="store_true", help="write the README table from results.json")
    parser.add_argument("--sweep-stride", type=int, default=16, help="every n-th prefix (all near the ends)")
    args = parser.parse_args()
    if args.readme_only:
        write_readme(json.loads((HERE / "results.json").read_text()))
        return 0
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "budget": args.budget,
        "plateau": args.plateau,
        "targets": {},
    }
    previous = HERE / "results.json"
    if args.targets and previous.exists():
        earlier = json.loads(previous.read_text())
        for r in earlier.get("targets", {}).values():
            r.setdefault("budget", earlier.get("budget"))
            r.setdefault("plateau", earlier.get("plateau"))
            r.setdefault("date", earlier.get("date"))
        results["targets"] = earlier.get("targets", {})
        if "sanitizer" in earlier:
            results["sanitizer"] = earlier["sanitizer"]
    ok = fuzz_rust(args, results)
    if not args.no_atheris:
        ok = fuzz_atheris(args, results) and ok
    if not args.no_sweeps:
        ok = run_sweeps(args, results) and ok
    elif previous.exists():
        results["sweeps"] = json.loads(previous.read_text()).get("sweeps")
    previous.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_readme:
        write_readme(results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
