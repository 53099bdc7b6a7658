"""Truncation and bit-flip sweeps (fuzz/sweeps.py), thinned to a few seconds: every format's
prefixes give a typed error (images: what clip's pipeline gives), and single bit flips in zip
headers, pickles and safetensors headers give a typed error, the original model or a model in
which one tensor differs. Run in a child process, so that a crash or a hang fails the test
rather than the suite. ``make fuzz`` runs the full sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import clipfast

SWEEPS = Path(__file__).resolve().parent.parent / "fuzz" / "sweeps.py"


def test_truncations_and_bit_flips_give_typed_errors_or_the_model(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(Path(clipfast.__file__).parent.parent), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(SWEEPS), "--stride", "4096", "--flip-stride", "29", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.exists(), result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"], report.get("failure")
    assert result.returncode == 0, result.stderr[-3000:]
    # Every format was swept, every kind of flip tried.
    assert len(report["truncation_points"]) == 14 and min(report["truncation_points"].values()) > 20
    kinds = report["bit_flips"]
    assert len(kinds) == 7 and min(sum(v.values()) for v in kinds.values()) > 10
    # A flipped pickle never gets past the CRC-32 check.
    assert set(kinds["torch.save pickle, CRC unchanged"]) == {"error"}
