"""JPEGs decoded in Rust with Pillow's own libjpeg-turbo (``preprocess_batch`` on bytes and paths):
every result must equal clip's pipeline on ``Image.open`` of the same bytes, bit for bit, and every
file Pillow decodes differently or refuses must give Pillow's pixels or a typed error."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pytest
import torch
from clipfast import _native, transforms
from clipfast.errors import ImageError
from PIL import Image, _imaging

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

_REFERENCES: dict[int, Any] = {}


def reference(data: bytes, n_px: int) -> torch.Tensor:
    if n_px not in _REFERENCES:
        _REFERENCES[n_px] = clip.clip._transform(n_px)
    return _REFERENCES[n_px](Image.open(io.BytesIO(data)))


def photo(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Gradients, edges and noise: chroma that subsampling and upsampling both change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            127 + 110 * np.sin(xx / max(w, 1) * 9 + seed),
            127 + 110 * np.cos(yy / max(h, 1) * 6),
            255 * ((xx // 5 + yy // 3) % 2),
        ],
        axis=-1,
    )
    noisy = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


def jpeg(img: Image.Image, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **params)
    return buf.getvalue()


#: Where the Rust JPEG path must be in use: Linux, with Pillow's wheel (its bundled libjpeg-turbo).
RUST_PATH = sys.platform.startswith("linux")


def rust(data: bytes, n_px: int, fast: bool = False) -> tuple[torch.Tensor, str | None]:
    """The Rust JPEG path alone (no fallback to Pillow): result and error. Where that path must
    be in use, a libjpeg that cannot be loaded fails the calling test instead of skipping it."""
    if RUST_PATH:
        assert loaded(), "Pillow's libjpeg cannot be used from Rust"
    out = torch.empty((1, 3, n_px, n_px))
    norm = transforms._normalization(transforms.MEAN, transforms.STD, torch.float32)
    mode = "jpeg-fast" if fast else "jpeg"
    err = transforms._run([(data, 0, 0, mode)], out, n_px, norm, 1)[0]
    return out[0], err


def loaded() -> bool:
    """Whether Rust found Pillow's libjpeg (the direct checks below then run even if the check
    against Pillow at first use had turned the path off)."""
    return _native.use_pillow_libjpeg(_imaging.__file__) is None


def test_rust_path_is_in_use() -> None:
    """With Pillow's wheel on Linux the check against Pillow passes, so the tests below run the
    Rust decoder (elsewhere JPEGs stay with Pillow, and these tests still hold)."""
    if sys.platform.startswith("linux"):
        assert transforms._jpeg_in_rust()


def test_without_a_usable_libjpeg_jpegs_stay_with_pillow(tmp_path: Path) -> None:
    """A Pillow whose ``_imaging`` gives no libjpeg-turbo with the 6.2 ABI (a build against IJG
    libjpeg 8/9, another platform, a wheel laid out differently): the lookup fails, the check at
    first use turns the path off, and every JPEG, bytes or path, plain or fast, is Pillow's."""
    data = jpeg(photo(300, 200), subsampling=2)
    (tmp_path / "a.jpg").write_bytes(data)
    code = f"""
        import sys, warnings
        warnings.filterwarnings("ignore")
        sys.path.insert(0, {str(Path(clipfast.__file__).parent.parent)!r})
        from PIL import Image, _imaging
        from clipfast import _native, transforms
        # A library that is loaded but has none of libjpeg's functions, in place of Pillow's.
        _imaging.__file__ = _native.__file__
        import clip, clipfast, torch
        assert _native.use_pillow_libjpeg(_imaging.__file__) is not None
        assert not transforms._jpeg_in_rust()
        path = {str(tmp_path / "a.jpg")!r}
        data = open(path, "rb").read()
        assert transforms._rust_mode(data, False) is None
        expected = clip.clip._transform(224)(Image.open(path))
        for batch in (clipfast.preprocess_batch([data, path]), clipfast.preprocess_batch([path], threads=1)):
            for got in batch:
                assert torch.equal(got, expected)
        fast = clipfast.preprocess_batch([data], 32, decode="fast")[0]
        img = Image.open(path)
        img.draft(None, (64, 64))
        assert torch.equal(fast, clip.clip._transform(32)(img))
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


SIZES = [
    (1, 1),
    (2, 3),
    (17, 9),
    (224, 224),
    (225, 224),
    (300, 224),
    (224, 300),
    (640, 480),
    (480, 640),
    (1001, 999),
    (3000, 300),
    (300, 3000),  # vertical pass first (Pillow 13)
    (5000, 50),
    (50, 2000),
]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["444", "422", "420"])
def test_equals_clip_every_size_and_subsampling(size: tuple[int, int], subsampling: int) -> None:
    data = jpeg(photo(*size, seed=size[0]), quality=90, subsampling=subsampling)
    expected = reference(data, 224)
    got, err = rust(data, 224)
    if RUST_PATH:
        assert err is None
        assert torch.equal(got, expected), (got - expected).abs().max()
    assert torch.equal(clipfast.preprocess_batch([data], threads=1)[0], expected)


VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("grey", "L", {}),
    ("progressive", "RGB", {"progressive": True}),
    ("progressive-grey", "L", {"progressive": True}),
    ("restart-markers", "RGB", {"restart_marker_blocks": 3}),
    ("optimized-huffman", "RGB", {"optimize": True}),
    ("quality-30", "RGB", {"quality": 30}),
    ("quality-100-444", "RGB", {"quality": 100, "subsampling": 0}),
]


@pytest.mark.parametrize("name,mode,params", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("n_px", [224, 336, 64])
def test_equals_clip_every_kind_of_jpeg(name: str, mode: str, params: dict[str, Any], n_px: int) -> None:
    for size in [(700, 433), (433, 700), (n_px, n_px + 1)]:
        data = jpeg(photo(*size, mode=mode, seed=n_px), **params)
        expected = reference(data, n_px)
        got, err = rust(data, n_px)
        if RUST_PATH:
            assert err is None
            assert torch.equal(got, expected), (name, size)
        assert torch.equal(clipfast.preprocess_batch([data], n_px, threads=1)[0], expected)


def test_fast_mode_is_pillow_draft_in_rust() -> None:
    """decode="fast" in Rust: libjpeg's DCT scaling exactly as Pillow's draft sets it up."""
    for size, scale in [((200, 150), 2), ((300, 520), 4), ((1900, 1000), 8), ((601, 4003), 8)]:
        data = jpeg(photo(*size, seed=3), quality=85)
        img = Image.open(io.BytesIO(data))
        img.draft(None, (64, 64))  # n_px 32
        img.load()
        assert img.size == ((size[0] + scale - 1) // scale, (size[1] + scale - 1) // scale)
        expected = clip.clip._transform(32)(img)
        got, err = rust(data, 32, fast=True)
        if RUST_PATH:
            assert err is None
            assert torch.equal(got, expected)
        assert torch.equal(clipfast.preprocess_batch([data], 32, decode="fast")[0], expected)


def test_cmyk_goes_to_pillow() -> None:
    data = jpeg(photo(300, 200, "CMYK"))
    _, err = rust(data, 224)
    assert err is not None and "4 components" in err
    assert torch.equal(clipfast.preprocess_batch([data])[0], reference(data, 224))


def _damaged(data: bytes) -> dict[str, bytes]:
    sos = data.index(b"\xff\xda")
    middle = (sos + len(data)) // 2
    flipped = bytearray(data)
    for k in range(0, 40, 7):
        flipped[middle + k] ^= 0x5A
    return {
        "truncated-10%": data[: len(data) // 10],
        "truncated-half": data[: len(data) // 2],
        "truncated-before-eoi": data[:-2],
        "cut-in-header": data[: sos - 10],
        "bit-flips": bytes(flipped),
        "junk-before-eoi": data[:-2] + b"\x00\x11\x22" + data[-2:],
        "junk-after-eoi": data + b"trailing bytes that are not JPEG",
        "no-sos": data[:sos] + b"\xff\xd9",
        "soi-only": b"\xff\xd8\xff",
    }


def _huge_header(data: bytes) -> bytes:
    """The same file with a SOF that declares 60000 x 60000 pixels."""
    sof = data.index(b"\xff\xc0")
    patched = bytearray(data)
    patched[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    return bytes(patched)


@pytest.mark.parametrize("threads", [1, 2])
def test_damaged_files_give_pillows_pixels_or_a_typed_error(threads: int) -> None:
    good = jpeg(photo(640, 400, seed=11), quality=90)
    cases = _damaged(good)
    cases["declared-huge"] = _huge_header(good)
    for name, data in cases.items():
        try:
            expected: torch.Tensor | None = reference(data, 224)
        except Exception:  # clip's pipeline refuses it (Pillow's error)
            expected = None
        if expected is None:
            with pytest.raises(ImageError, match=r"item 1\b"):
                clipfast.preprocess_batch([good, data], threads=threads)
            out, bad = clipfast.preprocess_batch([good, data], threads=threads, on_error="skip")
            assert bad == [1], name
        else:
            out = clipfast.preprocess_batch([good, data], threads=threads)
            assert torch.equal(out[1], expected), name


def test_damage_below_the_crop_is_seen() -> None:
    """A tall image: the crop reads the middle rows only, yet damage in the last rows must make
    the file fail as it fails in clip (libjpeg-turbo's skip to the very end reads nothing)."""
    good = jpeg(photo(64, 400, "L", seed=5), quality=80)
    eoi = len(good) - 2
    cases = {
        "bad-marker-near-the-end": good[: eoi - 20] + b"\xff\x5e" + good[eoi - 20 :],
        "truncated-near-the-end": good[: eoi - 30],
    }
    for name, data in cases.items():
        with pytest.raises(OSError):
            reference(data, 32)  # Pillow refuses it (precondition)
        _, err = rust(data, 32)
        assert err is not None and err.startswith("libjpeg: "), (name, err)  # libjpeg saw it
        with pytest.raises(ImageError, match=r"item 0\b"):
            clipfast.preprocess_batch([data], 32)


def test_truncated_file_is_refused_by_rust() -> None:
    """libjpeg pads a truncated stream with grey and warns; the Rust path must not keep that."""
    data = jpeg(photo(640, 400))
    _, err = rust(data[: len(data) // 2], 224)
    assert err is not None and err.startswith("libjpeg: ") and "(a warning)" in err, err


def test_max_image_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg(photo(200, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    _, err = rust(data, 32)
    assert err is not None and "MAX_IMAGE_PIXELS" in err
    with pytest.raises(ImageError, match=r"item 0: .*MAX_IMAGE_PIXELS"):
        clipfast.preprocess_batch([data])


def test_many_threads_many_sizes(tmp_path: Any) -> None:
    """Paths and bytes, mixed sizes and kinds, on two threads: each equals clip's result."""
    items: list[Any] = []
    expected = []
    for i, (w, h) in enumerate([(640, 480), (200, 900), (1200, 300), (224, 224), (333, 777)] * 2):
        data = jpeg(photo(w, h, "L" if i % 3 == 0 else "RGB", seed=i), quality=70 + i)
        if i % 2:
            path = tmp_path / f"{i}.jpg"
            path.write_bytes(data)
            items.append(str(path))
        else:
            items.append(data)
        expected.append(reference(data, 224))
    out = clipfast.preprocess_batch(items, threads=2)
    assert torch.equal(out, torch.stack(expected))


def _mutants(count: int, seed: int) -> list[bytes]:
    """Random damage to small JPEGs of every kind: changed, inserted and deleted bytes, cuts."""
    rng = random.Random(seed)
    bases = [
        jpeg(photo(96, 64, seed=1), quality=80),
        jpeg(photo(64, 96, seed=2), quality=80, progressive=True),
        jpeg(photo(80, 80, seed=3), quality=80, subsampling=0, restart_marker_blocks=2),
        jpeg(photo(90, 70, "L", seed=4)),
        jpeg(photo(48, 300, seed=5), quality=70),  # tall: rows below the crop are skipped
    ]
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(bases))
        kind = rng.randrange(4)
        at = rng.randrange(len(data))
        if kind == 0:
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            del data[at:]
        elif kind == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del data[at : at + rng.randint(1, 50)]
        out.append(bytes(data))
    return out


def test_random_damage_behaves_as_in_clip() -> None:
    """Fuzzing against the reference: each mutant gives clip's tensor, or an ImageError where
    clip's pipeline raises. (6,000 mutants of this kind ran clean before this test was fixed at
    400; one, a bad marker below the crop, had found the skip-to-the-end bug.)"""
    mutants = _mutants(400, seed=2026)
    out, bad = clipfast.preprocess_batch(mutants, 32, threads=2, on_error="skip")
    kept = iter(out)
    for i, data in enumerate(mutants):
        try:
            expected: torch.Tensor | None = reference(data, 32)
        except Exception:
            expected = None
        if expected is None:
            assert i in bad, i
        else:
            assert i not in bad, i
            assert torch.equal(next(kept), expected), i
