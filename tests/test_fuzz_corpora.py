"""The committed inputs of the Python fuzz targets (fuzz/differential.py: PNG and JPEG against
clip's pipeline on Pillow, the tokenizer against clip's; fuzz/configs.py: configuration and
shard-index parsers give settings or typed errors), replayed as ordinary tests:
seeds, the minimised corpora `make fuzz` keeps, and every input that once showed a divergence
(fuzz/regressions/). The Rust targets' corpora are replayed by `cargo test`
(rust/fuzzing.rs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import configs  # noqa: E402
import differential  # noqa: E402

SEEDS = {"png_vs_pillow": "png", "jpeg_vs_pillow": "jpeg", "tokenizer_vs_clip": "tokenizer"}
CHECKS = {**differential.CHECKS, **configs.CHECKS}


def inputs(target: str) -> list[Path]:
    seeds = FUZZ / "seeds" / SEEDS.get(target, target)
    folders = [seeds, FUZZ / "corpus" / target, FUZZ / "regressions" / target]
    return sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir())


@pytest.mark.parametrize("target", list(CHECKS))
def test_committed_inputs_behave_as_the_reference(target: str) -> None:
    files = inputs(target)
    assert files, f"no committed inputs for {target}"
    for path in files:
        try:
            CHECKS[target](path.read_bytes())
        except AssertionError as err:
            raise AssertionError(f"{path.relative_to(FUZZ)}: {err}") from None
