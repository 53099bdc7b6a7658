"""Differential fuzz targets: clipfast against the references on the same input.

- ``png_vs_pillow`` / ``jpeg_vs_pillow``: ``clipfast.preprocess_batch([bytes])`` against clip's
  own pipeline (``clip.clip._transform`` on ``Image.open``): the same tensor, bit for bit, where
  clip gives one, and a ``clipfast.ImageError`` where clip's pipeline raises. JPEGs also in the
  fast mode, against clip's pipeline on Pillow's draft-decoded image.
- ``tokenizer_vs_clip``: ``clipfast.tokenize`` against ``clip.tokenize`` on arbitrary Unicode
  (lone surrogates included), truncating and not: the same ids, or both raising.

Run under atheris (coverage of the Python side; the Rust extension and libjpeg are not
instrumented) by ``make fuzz`` (fuzz/run.py):

    .venv/bin/python fuzz/differential.py png_vs_pillow CORPUS_DIR SEEDS_DIR -max_total_time=60

``check(target, data)`` is what each input goes through; tests/test_fuzz_corpora.py replays the
committed corpora through it.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

#: Output size of the image targets: small, so that each input is quick; the pipeline is the same.
N_PX = 32
#: Pillow's decompression-bomb limit while fuzzing (a header may claim any size). Between this and
#: twice it Pillow only warns where clipfast refuses (documented); those inputs are skipped.
MAX_PIXELS = 1 << 20

_LOADED: dict[str, Any] = {}


def _setup() -> dict[str, Any]:
    """Imports Pillow, clip and clipfast on first use (so that atheris can instrument them)."""
    if not _LOADED:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import clip

        import clipfast
        from clipfast.errors import ImageError

        _LOADED.update(
            Image=Image,
            clip=clip,
            clipfast=clipfast,
            ImageError=ImageError,
            transform=clip.clip._transform(N_PX),
        )
    return _LOADED


def _clip_pipeline(data: bytes, draft: int | None = None) -> torch.Tensor | None:
    """clip's preprocess of the file, or None where it raises (any exception: that is clip's
    behaviour the user sees)."""
    m = _setup()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", m["Image"].DecompressionBombWarning)
            img = m["Image"].open(io.BytesIO(data))
            if draft is not None and img.format in ("JPEG", "MPO"):
                img.draft(None, (draft, draft))
            out: torch.Tensor = m["transform"](img)
            return out
    except Exception:
        return None


def _oversized(data: bytes) -> bool:
    """Whether Pillow's header reading says more pixels than the limit (not compared)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, h = _setup()["Image"].open(io.BytesIO(data)).size
        return w * h > MAX_PIXELS
    except Exception:
        return False


def _compare_image(data: bytes, decode: str) -> None:
    m = _setup()
    limit = m["Image"].MAX_IMAGE_PIXELS
    m["Image"].MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        if _oversized(data):
            return
        expected = _clip_pipeline(data, 2 * N_PX if decode == "fast" else None)
        try:
            batch = m["clipfast"].preprocess_batch([data], N_PX, threads=1, decode=decode)
            got: torch.Tensor | None = batch[0]
        except m["ImageError"]:
            got = None
    finally:
        m["Image"].MAX_IMAGE_PIXELS = limit
    # Anything but ImageError (a crash would not even get here) is a failure of its own.
    if expected is None:
        assert got is None, f"clip's pipeline refuses this file, clipfast ({decode}) gives a tensor"
    else:
        assert got is not None, f"clip's pipeline gives a tensor, clipfast ({decode}) refuses the file"
        assert torch.equal(got, expected), f"clipfast ({decode}) gives other values than clip"


def check_png(data: bytes) -> None:
    _compare_image(data, "exact")


def check_jpeg(data: bytes) -> None:
    _compare_image(data, "exact")
    _compare_image(data, "fast")


def _text(data: bytes) -> str:
    """Arbitrary Unicode from bytes: UTF-8, each byte that is not part of a character becoming a
    lone surrogate (U+DC80-U+DCFF), which clip's cleaning must also survive."""
    return data.decode("utf-8", "surrogateescape")


def _tokens(tokenize: Callable[..., torch.Tensor], text: str, truncate: bool) -> object:
    try:
        return tokenize([text], context_length=77, truncate=truncate).tolist()
    except RuntimeError as err:  # too long for the context (both raise RuntimeError)
        return ("RuntimeError", "too long" in str(err))


def check_tokenizer(data: bytes) -> None:
    m = _setup()
    text = _text(data)
    for truncate in (True, False):
        expected = _tokens(m["clip"].tokenize, text, truncate)
        got = _tokens(m["clipfast"].tokenize, text, truncate)
        assert got == expected, f"tokens differ for {text!r} (truncate={truncate})"


CHECKS: dict[str, Callable[[bytes], None]] = {
    "png_vs_pillow": check_png,
    "jpeg_vs_pillow": check_jpeg,
    "tokenizer_vs_clip": check_tokenizer,
}


def check(target: str, data: bytes) -> None:
    CHECKS[target](data)


def main() -> None:
    import atheris

    target = sys.argv[1]
    run = CHECKS[target]
    # Coverage of Pillow's Python chunk and marker readers, clip's and clipfast's Python code.
    with atheris.instrument_imports(include=["PIL", "clip", "clipfast", "ftfy"]):
        _setup()
    atheris.Setup([sys.argv[0], *sys.argv[2:]], run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
