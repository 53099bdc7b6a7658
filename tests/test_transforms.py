"""clipfast's preprocess against clip's own (`clip.clip._transform`, PIL + torchvision): bit for bit."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pytest
import torch
from clipfast import _native, transforms
from clipfast.errors import ImageError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

IMAGES = Path(__file__).parent / "images"
PHOTOS = sorted(p for p in IMAGES.iterdir() if p.suffix in (".jpg", ".png"))
MODES = ["RGB", "L", "LA", "RGBA", "P", "PA", "CMYK", "I;16", "I", "F", "1", "P+transparency"]

_REFERENCES: dict[int, Any] = {}


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """``img`` saved as a ``fmt`` file, in memory."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def reference(img: Image.Image, n_px: int) -> torch.Tensor:
    if n_px not in _REFERENCES:
        _REFERENCES[n_px] = clip.clip._transform(n_px)
    return _REFERENCES[n_px](img)


def synthetic(w: int, h: int, mode: str, seed: int = 0) -> Image.Image:
    """A photo-like image: smooth gradients, hard edges and noise (so every pass matters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            127 + 120 * np.sin(xx / max(w, 1) * 7 + 1),
            127 + 120 * np.cos(yy / max(h, 1) * 5),
            (xx + yy) % 256,
            255 * ((xx // 7 + yy // 5) % 2),
        ],
        axis=-1,
    )
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    rgba = Image.fromarray(noisy, "RGBA")
    if mode == "RGBA":
        return rgba
    if mode == "P":
        return rgba.convert("RGB").quantize(100)
    if mode == "P+transparency":
        img = rgba.convert("RGB").quantize(50)
        img.info["transparency"] = 3
        return img
    if mode == "PA":
        return rgba.convert("PA")
    if mode == "I;16":
        return Image.frombytes("I;16", (w, h), (noisy[..., 0].astype("<u2") * 257).tobytes())
    if mode == "I":
        return Image.fromarray(noisy[..., 1].astype(np.int32) * 3 - 200)
    if mode == "F":
        return Image.fromarray(noisy[..., 2].astype(np.float32) * 1.7 - 50.25)
    return rgba.convert(mode)


def assert_exact(img: Image.Image, n_px: int) -> None:
    try:
        expected = reference(img, n_px)
    except ValueError as e:  # Pillow < 11 cannot resize I;16 images: clip fails, and so must clipfast
        with pytest.raises(ValueError, match=re.escape(str(e))):
            transforms.for_resolution(n_px)(img)
        return
    got = transforms.for_resolution(n_px)(img)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected), f"max diff {(got - expected).abs().max()} for {img.mode} {img.size}"


SIZES = [(1, 1), (2, 3), (3, 2), (224, 224), (224, 300), (225, 224), (640, 480), (480, 640), (301, 299)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_matches_clip_every_mode_and_size(mode: str, size: tuple[int, int]) -> None:
    assert_exact(synthetic(*size, mode, seed=hash(size) % 1000), 224)


@pytest.mark.parametrize("n_px", [224, 288, 336, 384, 448])
def test_every_model_resolution(n_px: int) -> None:
    for i, mode in enumerate(["RGB", "RGBA", "L"]):
        assert_exact(synthetic(500 + 37 * i, 410, mode, seed=n_px + i), n_px)
    assert_exact(synthetic(n_px, n_px, "RGB"), n_px)  # exactly n_px: no resize at all
    assert_exact(synthetic(n_px + 1, n_px, "RGB"), n_px)  # width only, crop offset rounds


@pytest.mark.parametrize(
    ("size", "mode"),
    [
        ((4000, 3000), "RGB"),  # big photo, horizontal pass first
        ((5000, 50), "RGB"),  # panorama: upscaled height
        ((300, 3000), "RGB"),  # tall: Pillow 13 runs the vertical pass first
        ((300, 3000), "RGBA"),
        ((3000, 300), "L"),
        ((120, 2000), "I;16"),
        ((2000, 120), "F"),
    ],
)
def test_large_and_extreme_shapes(size: tuple[int, int], mode: str) -> None:
    assert_exact(synthetic(*size, mode), 224)


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_real_photos(photo: Path) -> None:
    img = Image.open(photo)
    img.load()
    for n_px in (224, 336):
        assert_exact(img, n_px)
    assert_exact(img.convert("L"), 224)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.integers(1, 90),
    h=st.integers(1, 90),
    n_px=st.sampled_from([1, 5, 16, 33, 64, 224]),
    mode=st.sampled_from(["RGB", "L", "LA", "RGBA", "CMYK", "I;16", "I", "F", "P"]),
    seed=st.integers(0, 2**31),
)
def test_random_images_property(w: int, h: int, n_px: int, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Uniform noise, and sometimes extreme values, stress clamping between the passes.
    data = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    if seed % 3 == 0:
        data = np.where(data > 127, 255, 0).astype(np.uint8)
    img = Image.fromarray(data, "RGBA")
    if mode == "I;16":
        img = Image.frombytes("I;16", (w, h), rng.integers(0, 65536, (h, w)).astype("<u2").tobytes())
    elif mode == "I":
        img = Image.fromarray(rng.integers(-1000, 1000, (h, w)).astype(np.int32))
    elif mode == "F":
        img = Image.fromarray((rng.standard_normal((h, w)) * 300).astype(np.float32))
    elif mode == "P":
        img = img.convert("RGB").quantize(16)
    elif mode != "RGBA":
        img = img.convert(mode)
    assert_exact(img, n_px)


@pytest.mark.parametrize("size", [(300, 250), (250, 300), (7, 5), (224, 300)])
@pytest.mark.parametrize("extreme", [2**31 - 1, transforms._I_EXACT_LIMIT - 1])
def test_mode_i_near_int32_limits(size: tuple[int, int], extreme: int) -> None:
    """Bicubic overshoot past int32: Pillow stores such sums with a C cast (x86-64 builds wrap),
    which the saturating Rust cast did not reproduce; below the limit Rust stays exact."""
    rng = np.random.default_rng(sum(size) + extreme % 97)
    w, h = size
    values = rng.choice(np.array([-extreme - 1, extreme, 0, 5], dtype=np.int64), size=(h, w))
    img = Image.fromarray(values.astype(np.int32))
    assert_exact(img, 224)
    expected = reference(img, 224)
    assert torch.equal(clipfast.preprocess_batch([img, img], threads=2)[1], expected)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "CMYK", "I;16", "I", "F"])
def test_resize_crop_equals_pillow_in_native_mode(mode: str) -> None:
    """The Rust resize alone, against Pillow's resize + crop (both pass orders, SIMD and scalar)."""
    if mode == "I;16" and mode not in transforms._RESIZED_MODES:
        pytest.skip("the Rust I;16 resize reproduces Pillow >= 12.3; clipfast lets older Pillow resize I;16")
    for w, h in [(97, 61), (61, 700), (700, 61), (3, 5), (64, 64)]:
        img = synthetic(w, h, mode, seed=w)
        tw, th = transforms.resized_size(w, h, 32)
        resized = img.resize((tw, th), Image.Resampling.BICUBIC) if (tw, th) != (w, h) else img
        left, top = round((tw - 32) / 2), round((th - 32) / 2)
        expected = resized.crop((left, top, left + 32, top + 32)).tobytes()
        for simd in (True, False):
            assert _native.resize_crop(img.tobytes(), w, h, mode, 32, simd) == expected
            # Pillow's rows in place where clipfast recognises this Pillow's image struct, as it does.
            assert _native.resize_crop(transforms._pixels(img), w, h, mode, 32, simd) == expected


def test_simd_and_scalar_paths_agree() -> None:
    n = 224
    lut = transforms._lut(transforms.MEAN, transforms.STD, torch.float32)
    imgs = [
        synthetic(w, h, m, seed=w + h)
        for (w, h), m in [((1000, 700), "RGB"), ((300, 2000), "RGBA"), ((999, 333), "L"), ((500, 501), "LA")]
    ]
    items = [(transforms._pixels(im), *im.size, im.mode) for im in imgs]
    outs = []
    for simd in (True, False):
        out = torch.empty((len(items), 3, n, n))
        assert _native.preprocess_into(items, n, lut, out.data_ptr(), out.numel(), "float32", 2, simd) == [
            None
        ] * len(items)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert _native.simd_level() == _cpu_simd_level()


def _cpu_simd_level() -> str:
    """What the CPU offers, from /proc/cpuinfo (Linux x86-64): the level the 8-bit passes must use."""
    flags: set[str] = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next(
                (set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set()
            )
    if "avx2" not in flags:
        return "none"
    if os.environ.get("CLIPFAST_SIMD") == "avx2":
        return "avx2"
    if "avx_vnni" in flags:
        return "avx2+avxvnni"
    if {"avx512f", "avx512vl", "avx512_vnni"} <= flags:
        return "avx2+avx512vnni"
    return "avx2"


def test_clipfast_scalar_forces_the_scalar_reference() -> None:
    """CLIPFAST_SCALAR=1 (docs/preprocess.md): the scalar passes run, with clip's exact results."""
    code = textwrap.dedent(
        """
        import json, sys, torch, numpy as np, warnings
        warnings.filterwarnings("ignore")
        import clip, clipfast
        from clipfast import transforms
        from PIL import Image
        rng = np.random.default_rng(1)
        imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(m)
                for (w, h), m in [((640, 427), "RGB"), ((300, 900), "RGBA"), ((333, 222), "L")]]
        ref = clip.clip._transform(224)
        same = [bool(torch.equal(clipfast.preprocess_batch([im])[0], ref(im))) for im in imgs]
        same += [bool(torch.equal(transforms.for_resolution(224)(im), ref(im))) for im in imgs]
        print(json.dumps({"simd": transforms._SIMD, "same": same}))
        """
    )
    env = {**os.environ, "CLIPFAST_SCALAR": "1", "PYTHONPATH": str(Path(clipfast.__file__).parent.parent)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"simd": False, "same": [True] * 6}
    assert transforms._SIMD is (os.environ.get("CLIPFAST_SCALAR", "") in ("", "0"))


@pytest.mark.parametrize(
    ("mean", "std"),
    [
        (transforms.MEAN, transforms.STD),
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ((0.1, 0.2, 0.3), (3.0, 1e-3, 0.7)),
    ],
)
def test_arithmetic_normalisation_equals_the_table(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """The float32 SIMD route ((x / 255 - mean) / std) gives the torch-built table's bits, for every
    pixel layout; given constants that do not make the table, Rust must keep to the table."""
    n = 37  # not a multiple of 8: the tail after the vector loop is covered too
    norm = transforms._normalization(mean, std, torch.float32)
    assert norm.mean_std is not None
    imgs = [synthetic(90, 61, m, seed=i) for i, m in enumerate(["RGB", "RGBA", "L", "LA"])]
    imgs.append(Image.fromarray(np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)).resize((n, n)))
    items = [(transforms._pixels(im), *im.size, im.mode) for im in imgs]
    wrong = ((mean[0] + 0.25, mean[1], mean[2]), norm.mean_std[1])
    outs = []
    for mean_std in (None, norm.mean_std, wrong):
        out = torch.empty((len(items), 3, n, n))
        errors = _native.preprocess_into(
            items, n, norm.table, out.data_ptr(), out.numel(), "float32", 1, True, None, mean_std
        )
        assert errors == [None] * len(items)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[2])
    for img, out in zip(imgs, outs[1]):
        expected = clip.clip.Normalize(mean, std)(clip.clip.ToTensor()(transforms._pillow_steps(img, n)))
        assert torch.equal(out, expected)


def test_lut_is_torchvision_arithmetic() -> None:
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    img = Image.fromarray(values.permute(1, 2, 0).numpy().copy(), "RGB")
    tt = clip.clip.ToTensor()(img)
    norm = clip.clip.Normalize(transforms.MEAN, transforms.STD)(tt)
    lut = np.frombuffer(transforms._lut(transforms.MEAN, transforms.STD, torch.float32), np.float32)
    assert np.array_equal(lut.reshape(3, 256), norm.numpy().reshape(3, 256))


# --- the preprocess object ------------------------------------------------------------------------


def test_preprocess_object_is_picklable_and_keeps_its_shape() -> None:
    pre = transforms.for_resolution(224)
    names = [type(t).__name__ for t in pre.transforms]
    assert names == ["Resize", "CenterCrop", "ConvertToRGB", "ToTensor", "Normalize"]
    assert pre.transforms[-1].mean == transforms.MEAN and pre.transforms[-1].std == transforms.STD
    clone = pickle.loads(pickle.dumps(pre))
    img = synthetic(333, 222, "RGB")
    assert torch.equal(clone(img), reference(img, 224))


def test_load_leaves_pil_image_for_the_first_image(openai_archive: Callable[[str], Path]) -> None:
    """clipfast.load does not import PIL.Image (imported under the conversion it cost ~30 ms); the
    preprocess it returns imports it on first use and gives clip's pixels, with Pillow's filters
    in its attributes as before."""
    code = textwrap.dedent(
        """
        import sys, pickle
        import clipfast, torch
        from clipfast import transforms
        model, pre = clipfast.load(sys.argv[1], device="cpu")
        bilinear = transforms.for_config(transforms.PreprocessConfig(size=32, interpolation="bilinear"))
        copy = pickle.loads(pickle.dumps(pre))
        assert "PIL.Image" not in sys.modules, "PIL.Image imported by load"
        from PIL import Image
        img = Image.new("RGB", (57, 41), (200, 30, 90))
        img.putpixel((20, 20), (0, 255, 0))
        out = pre(img)
        steps = [transforms.Resize(224, Image.Resampling.BICUBIC), transforms.CenterCrop(224),
                 transforms.ConvertToRGB(), transforms.ToTensor(),
                 transforms.Normalize(transforms.MEAN, transforms.STD)]
        eager = img
        for step in steps:
            eager = step(eager)
        assert torch.equal(out, eager) and torch.equal(copy(img), eager)
        assert pre.transforms[0].interpolation is Image.Resampling.BICUBIC
        assert copy.transforms[0].interpolation is Image.Resampling.BICUBIC
        assert bilinear.transforms[0].interpolation is Image.Resampling.BILINEAR
        assert "interpolation=bilinear" in repr(bilinear)
        """
    )
    archive = openai_archive("ViT-B/32")
    subprocess.run([sys.executable, "-c", code, str(archive)], check=True, timeout=300)


def test_steps_expose_torchvisions_attributes() -> None:
    """Code that reads the steps' attributes (say, the crop size) sees what clip's Compose holds."""
    ours, theirs = transforms.for_resolution(336), clip.clip._transform(336)
    assert ours.transforms[0].size == theirs.transforms[0].size == 336
    assert ours.transforms[1].size == theirs.transforms[1].size == (336, 336)
    assert repr(ours.transforms[1]) == repr(theirs.transforms[1])
    assert tuple(ours.transforms[4].mean) == tuple(theirs.transforms[4].mean)
    assert tuple(ours.transforms[4].std) == tuple(theirs.transforms[4].std)
    img = synthetic(333, 222, "RGB")
    for size in (200, (150, 180), [180, 150], (190,)):
        crop = transforms.CenterCrop(size)
        reference_crop = clip.clip.CenterCrop(size)
        assert crop.size == tuple(reference_crop.size)
        assert np.array_equal(np.asarray(crop(img)), np.asarray(reference_crop(img)))
    with pytest.raises(ValueError, match="CenterCrop size"):
        transforms.CenterCrop((1, 2, 3))
    for size in (200, [200], (150, 260), (333, 222)):
        resize = transforms.Resize(size)
        reference_resize = clip.clip.Resize(size, clip.clip.BICUBIC)
        assert np.array_equal(np.asarray(resize(img)), np.asarray(reference_resize(img)))
    with pytest.raises(ValueError, match="Resize size"):
        transforms.Resize((1, 2, 3))(img)
    # torchvision's other attributes (found missing by the API probe): max_size caps the longer
    # side, antialias is kept (a PIL image is always antialiased), and the repr is torchvision's.
    # (torchvision < 0.17 defaults antialias to "warn", which only tensors heed: compare with its
    # Resize given antialias=True, the default since, and clipfast's.)
    reference_first = theirs.transforms[0]
    if reference_first.antialias == "warn":
        reference_first = clip.clip.Resize(336, clip.clip.BICUBIC, antialias=True)
    assert repr(ours.transforms[0]) == repr(reference_first)
    assert (ours.transforms[0].max_size, ours.transforms[0].antialias) == (
        reference_first.max_size,
        reference_first.antialias,
    )
    for size, max_size in ((200, 250), ([150], 200), (100, 400), (200, 201)):
        resize = transforms.Resize(size, max_size=max_size)
        reference_resize = clip.clip.Resize(size, clip.clip.BICUBIC, max_size=max_size)
        assert np.array_equal(np.asarray(resize(img)), np.asarray(reference_resize(img))), (size, max_size)
        assert np.array_equal(
            np.asarray(resize(img.transpose(Image.Transpose.TRANSPOSE))),
            np.asarray(reference_resize(img.transpose(Image.Transpose.TRANSPOSE))),
        )
    # In clip's pipeline, a max_size that shortens an elongated image's short side is honoured too
    # (the step-by-step path, not the fused one that assumes the short side is n_px).
    capped = transforms.for_resolution(224)
    capped.transforms[0] = transforms.Resize(224, max_size=300)
    reference = clip.clip._transform(224)
    reference.transforms[0] = clip.clip.Resize(224, clip.clip.BICUBIC, max_size=300)
    long_img = synthetic(900, 300, "RGB")
    assert torch.equal(capped(long_img), reference(long_img))
    for size, max_size in (((150, 260), 300), (200, 200)):
        with pytest.raises(ValueError) as ours_error:
            transforms.Resize(size, max_size=max_size)(img)
        with pytest.raises(ValueError) as theirs_error:
            clip.clip.Resize(size, clip.clip.BICUBIC, max_size=max_size)(img)
        assert str(ours_error.value).split(",")[0] == str(theirs_error.value).split(",")[0]


def test_swapped_steps_run_one_by_one() -> None:
    img = synthetic(333, 222, "RGB")
    pre = transforms.for_resolution(224)
    pre.transforms[-1] = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    expected = clip.clip.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(
        clip.clip.ToTensor()(clip.clip.CenterCrop(224)(clip.clip.Resize(224, clip.clip.BICUBIC)(img)))
    )
    assert torch.equal(pre(img), expected)
    pre.transforms.insert(0, lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    flipped = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    expected_flipped = clip.clip.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(
        clip.clip.ToTensor()(clip.clip.CenterCrop(224)(clip.clip.Resize(224, clip.clip.BICUBIC)(flipped)))
    )
    assert torch.equal(pre(img), expected_flipped)
    pre.transforms = pre.transforms[1:5]  # no Normalize: a plain ToTensor result
    expected_plain = clip.clip.ToTensor()(
        clip.clip.CenterCrop(224)(clip.clip.Resize(224, clip.clip.BICUBIC)(img))
    )
    assert torch.equal(pre(img), expected_plain)


def test_many_threads_at_once() -> None:
    pre = transforms.for_resolution(224)
    imgs = [synthetic(400 + i * 13, 300 + i * 7, ["RGB", "RGBA", "L"][i % 3], seed=i) for i in range(12)]
    expected = [reference(im, 224) for im in imgs]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(pre, imgs * 3))
    for i, g in enumerate(got):
        assert torch.equal(g, expected[i % len(imgs)])


class PhotoDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(synthetic(300 + i, 200 + 3 * i, "RGB", seed=i))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(context: str) -> None:
    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{context} is not available here")
    pre = transforms.for_resolution(224)
    pre(synthetic(50, 50, "RGB"))  # warm the caches in the parent before the workers start
    loader = torch.utils.data.DataLoader(
        PhotoDataset(pre), batch_size=3, num_workers=2, multiprocessing_context=context
    )
    got = torch.cat(list(loader))
    expected = torch.stack([reference(synthetic(300 + i, 200 + 3 * i, "RGB", seed=i), 224) for i in range(6)])
    assert torch.equal(got, expected)


# --- preprocess_batch -----------------------------------------------------------------------------


def test_batch_of_mixed_inputs_matches_clip(tmp_path: Path) -> None:
    photo = PHOTOS[0]
    img = synthetic(640, 480, "RGBA")
    arr = np.asarray(synthetic(500, 300, "RGB"))
    grey = np.asarray(synthetic(300, 500, "L"))
    png = encode(synthetic(257, 199, "P"), "PNG")
    items: list[Any] = [img, arr, grey, str(photo), photo, png, photo.read_bytes()]
    out = clipfast.preprocess_batch(items, 224, threads=2)
    decoded = [
        img,
        Image.fromarray(arr),
        Image.fromarray(grey),
        Image.open(photo),
        Image.open(photo),
        Image.open(io.BytesIO(png)),
        Image.open(photo),
    ]
    expected = torch.stack([reference(d, 224) for d in decoded])
    assert out.shape == (7, 3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_batch_reads_file_objects_from_their_position(tmp_path: Path) -> None:
    """Binary file objects (an open file, BytesIO) are read as Image.open reads them: from where
    they stand; something whose read() gives no bytes is a typed error for that item."""
    photo = PHOTOS[0]
    png = encode(synthetic(333, 222, "RGBA", seed=4), "PNG")
    prefixed = io.BytesIO(b"header" + png)
    prefixed.seek(6)

    class TextReader:
        def read(self) -> str:
            return "not bytes"

    with open(photo, "rb") as f:
        out, bad = clipfast.preprocess_batch([f, prefixed, TextReader()], 224, threads=2, on_error="skip")
    assert bad == [2]
    expected = torch.stack([reference(Image.open(photo), 224), reference(Image.open(io.BytesIO(png)), 224)])
    assert torch.equal(out, expected)
    with pytest.raises(clipfast.ImageError, match=r"item 0.*TextReader"):
        clipfast.preprocess_batch([TextReader()])


def test_empty_batch_is_an_empty_tensor() -> None:
    """A DataLoader's last batch after filtering can be empty: an empty result, not an error."""
    for dtype in (torch.float32, torch.float16, torch.uint8):
        out = clipfast.preprocess_batch([], 224, dtype=dtype)
        assert out.shape == (0, 3, 224, 224) and out.dtype == dtype
    out, bad = clipfast.preprocess_batch(iter([]), 336, on_error="skip")
    assert out.shape == (0, 3, 336, 336) and bad == []


def test_batch_dtypes() -> None:
    """float16 is clip's float32 result rounded; uint8 the RGB bytes of torchvision's Resize and
    CenterCrop as clip's pipeline applies them (references from clip's own module)."""
    imgs = [synthetic(300, 200, "RGB", seed=1), synthetic(200, 300, "LA", seed=2)]
    f16 = clipfast.preprocess_batch(imgs, 224, dtype=torch.float16)
    assert torch.equal(f16, torch.stack([reference(im, 224) for im in imgs]).half())
    u8 = clipfast.preprocess_batch(imgs, 224, dtype=torch.uint8)
    for i, im in enumerate(imgs):
        resized = clip.clip.CenterCrop(224)(clip.clip.Resize(224, interpolation=clip.clip.BICUBIC)(im))
        rgb = clip.clip._convert_image_to_rgb(resized)
        assert torch.equal(u8[i], torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
    with pytest.raises(ValueError):
        clipfast.preprocess_batch(imgs, dtype=torch.float64)


def test_batch_mean_and_std_are_normalize_s() -> None:
    """preprocess_batch(mean=, std=): clip's pipeline with that Normalize, for float32 and float16."""
    imgs = [synthetic(400, 300, "RGB", seed=5), synthetic(250, 260, "L", seed=6)]
    for mean, std in [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.1, 0.2, 0.3), (3.0, 1e-3, 0.7))]:
        pipeline = clip.clip.Compose(
            [*clip.clip._transform(224).transforms[:-1], clip.clip.Normalize(mean, std)]
        )
        expected = torch.stack([pipeline(im) for im in imgs])
        got = clipfast.preprocess_batch(imgs, 224, mean=mean, std=std)
        assert torch.equal(got, expected)
        assert torch.equal(
            clipfast.preprocess_batch(imgs, 224, mean=mean, std=std, dtype=torch.float16), expected.half()
        )


@pytest.mark.parametrize("kind", ["bool", "uint16", "int32", "float32", "HW1", "HW2", "HW4", "HW", "HW3"])
def test_batch_numpy_arrays_are_read_as_image_fromarray(kind: str) -> None:
    """Every array kind docs/preprocess.md lists gives clip's result on Image.fromarray(array)."""
    rng = np.random.default_rng(len(kind))
    h, w = 181, 263
    arrays = {
        "bool": rng.integers(0, 2, (h, w)).astype(bool),
        "uint16": rng.integers(0, 65536, (h, w)).astype(np.uint16),
        "int32": rng.integers(-1000, 70000, (h, w)).astype(np.int32),
        "float32": (rng.standard_normal((h, w)) * 200).astype(np.float32),
        "HW1": rng.integers(0, 256, (h, w, 1), dtype=np.uint8),
        "HW2": rng.integers(0, 256, (h, w, 2), dtype=np.uint8),
        "HW4": rng.integers(0, 256, (h, w, 4), dtype=np.uint8),
        "HW": rng.integers(0, 256, (h, w), dtype=np.uint8),
        "HW3": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
    }
    arr = arrays[kind]
    as_image = arr[:, :, 0] if kind == "HW1" else arr
    try:
        expected = reference(Image.fromarray(as_image), 224)
    except ValueError as e:  # Pillow < 11 cannot resize I;16 (uint16): clip fails, and so must clipfast
        with pytest.raises(ImageError, match=f"item 0: ValueError: {re.escape(str(e))}"):
            clipfast.preprocess_batch([arr], 224)
        return
    assert torch.equal(clipfast.preprocess_batch([arr], 224)[0], expected), kind


def test_batch_bad_inputs_name_the_index() -> None:
    good = PHOTOS[0].read_bytes()
    jpeg = next(p for p in PHOTOS if p.suffix == ".jpg").read_bytes()
    bad_items: list[Any] = [
        jpeg[: len(jpeg) // 3],  # truncated JPEG
        b"this is not an image at all",
        Image.new("RGB", (0, 5)),
        np.zeros((0, 4, 3), np.uint8),
        12345,
    ]
    for item in bad_items:
        with pytest.raises(ImageError, match=r"item 1\b"):
            clipfast.preprocess_batch([good, item, good], 224, threads=2)
    out, bad = clipfast.preprocess_batch([good, *bad_items, good], 224, on_error="skip", threads=2)
    assert bad == [1, 2, 3, 4, 5]
    assert out.shape == (2, 3, 224, 224)
    expected = reference(Image.open(io.BytesIO(good)), 224)
    assert torch.equal(out[0], expected) and torch.equal(out[1], expected)


def test_batch_refuses_decompression_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    png = encode(synthetic(200, 100, "RGB"), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 20,000 pixels: between 1x and 2x
    with pytest.raises(ImageError, match=r"item 0: .*MAX_IMAGE_PIXELS"):
        clipfast.preprocess_batch([png])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow's own DecompressionBombError
    out, bad = clipfast.preprocess_batch([png, png], on_error="skip")
    assert bad == [0, 1] and out.shape[0] == 0


def _interlaced_png(pixels: np.ndarray, color_type: int) -> bytes:
    """An Adam7-interlaced 8-bit PNG (Pillow writes only non-interlaced ones)."""
    h, w = pixels.shape[:2]
    raw = bytearray()
    for x0, y0, dx, dy in [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                raw += b"\x00" + row.tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def _png_cases() -> list[tuple[str, bytes]]:
    cases = []
    for mode, (w, h) in [
        ("L", (301, 207)),
        ("LA", (150, 400)),
        ("RGB", (640, 427)),
        ("RGBA", (224, 224)),
        ("RGB", (7, 3000)),
    ]:
        cases.append((f"{mode} {w}x{h}", encode(synthetic(w, h, mode, seed=w), "PNG")))
    for mode in ("L", "RGB"):  # tRNS: Pillow keeps L / RGB and only notes it
        transparency = 7 if mode == "L" else (7, 8, 9)
        cases.append(
            (f"{mode} + tRNS", encode(synthetic(260, 230, mode, seed=3), "PNG", transparency=transparency))
        )
    for mode, color in [("RGB", 2), ("LA", 4), ("RGBA", 6), ("L", 0)]:
        arr = np.asarray(synthetic(333, 251, mode, seed=color))
        cases.append((f"{mode} interlaced", _interlaced_png(arr, color)))
    return cases


@pytest.mark.parametrize(("name", "data"), _png_cases(), ids=[c[0] for c in _png_cases()])
def test_batch_decodes_8bit_png_in_rust_exactly(
    name: str, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8-bit L/LA/RGB/RGBA PNGs (interlaced or not) are decoded in Rust, to Pillow's pixels."""
    img = Image.open(io.BytesIO(data))
    assert img.mode in ("L", "LA", "RGB", "RGBA"), name
    expected = {n: reference(img, n) for n in (224, 336)}

    def no_pillow(item: Any) -> Image.Image:
        raise AssertionError("decoded by Pillow")

    monkeypatch.setattr(transforms, "_decode", no_pillow)
    for n, want in expected.items():
        assert torch.equal(clipfast.preprocess_batch([data, data], n, threads=2)[1], want), (name, n)


def test_batch_other_pngs_go_to_pillow(tmp_path: Path) -> None:
    """Palettes, 1-bit, 16-bit and animated PNGs: Pillow decodes them (its modes resize differently)."""
    rgb = synthetic(320, 240, "RGB", seed=5)
    items = {}
    for mode in ("P", "1", "I;16"):
        items[mode] = encode(synthetic(320, 240, mode, seed=6), "PNG")
    wide = np.asarray(rgb).astype(">u2") * 257 + 3  # 16-bit RGB: Pillow keeps the high bytes
    items["RGB;16"] = _interlaced_png(wide, 2).replace(b"\x08\x02\x00\x00\x01", b"\x10\x02\x00\x00\x01", 1)
    items["RGB;16"] = _fix_ihdr_crc(items["RGB;16"])
    items["APNG"] = encode(
        rgb, "PNG", save_all=True, append_images=[synthetic(320, 240, "RGB", seed=9)], duration=100
    )
    for name, data in items.items():
        path = tmp_path / f"{name.replace(';', '_')}.png"
        path.write_bytes(data)
        want = reference(Image.open(io.BytesIO(data)), 224)
        got = clipfast.preprocess_batch([data, path], 224, threads=2)
        assert torch.equal(got[0], want) and torch.equal(got[1], want), name


def _fix_ihdr_crc(data: bytes) -> bytes:
    body = data[12:29]
    return data[:29] + struct.pack(">I", zlib.crc32(body)) + data[33:]


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk."""
    out, at = [], 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        out.append((at, data[at + 4 : at + 8], length))
        at += 12 + length
    return out


def _with_chunk_before_idat(data: bytes, kind: bytes, body: bytes) -> bytes:
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:33] + chunk + data[33:]  # after the signature and IHDR


def _damaged_pngs() -> dict[str, bytes]:
    good = encode(synthetic(300, 200, "RGB"), "PNG")
    idat_at, _, idat_len = next(c for c in _png_chunks(good) if c[1] == b"IDAT")
    iccp = _with_chunk_before_idat(good, b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 128))
    text = _with_chunk_before_idat(good, b"tEXt", b"comment\x00tiny")
    iccp_at, _, iccp_len = next(c for c in _png_chunks(iccp) if c[1] == b"iCCP")
    text_at, _, text_len = next(c for c in _png_chunks(text) if c[1] == b"tEXt")

    def flip(data: bytes, at: int) -> bytes:
        out = bytearray(data)
        out[at] ^= 0x01
        return bytes(out)

    return {
        "truncated": good[: len(good) // 2],
        # Inside the compressed image data: a corrupt stream, or other pixels.
        "idat data": flip(good, idat_at + 8 + idat_len // 2),
        # Pillow does not check the CRC of image data chunks: both decode.
        "idat crc": flip(good, idat_at + 8 + idat_len),
        # Pillow checks the CRC of every chunk before the image data and refuses the file; the
        # png crate skipped ancillary chunks unchecked, so Rust decoded these (the fuzzer's find).
        "iCCP crc": flip(iccp, iccp_at + 8 + iccp_len),
        "tEXt crc": flip(text, text_at + 8 + text_len),
        "tEXt data": flip(text, text_at + 8 + 2),
        "chunk type": good[: idat_at + 5] + b"\x00" + good[idat_at + 6 :],
        "iCCP ok": iccp,
        "tEXt ok": text,
    }


@pytest.mark.parametrize("name", list(_damaged_pngs()))
def test_batch_damaged_pngs_behave_as_in_clip(name: str) -> None:
    """Each damaged PNG gives clip's tensor where clip's pipeline gives one, and an ImageError
    where it raises, whether Rust decodes it or hands it to Pillow."""
    data = _damaged_pngs()[name]
    good = encode(synthetic(300, 200, "RGB"), "PNG")
    try:
        want: Any = reference(Image.open(io.BytesIO(data)), 224)
    except Exception:
        want = None
    out, bad = clipfast.preprocess_batch([good, data, good], threads=2, on_error="skip")
    assert torch.equal(out[0], reference(Image.open(io.BytesIO(good)), 224))
    if want is None:
        assert bad == [1], name
        with pytest.raises(ImageError, match=r"item 0: "):
            clipfast.preprocess_batch([data])
    else:
        assert bad == [], name
        assert torch.equal(out[1], want), name


def test_damaged_png_cases_are_what_they_claim() -> None:
    """The cases above hit the chunks they name, and clip refuses exactly the CRC and type cases."""
    refused = set()
    for name, data in _damaged_pngs().items():
        try:
            reference(Image.open(io.BytesIO(data)), 32)
        except Exception:
            refused.add(name)
    assert {"truncated", "iCCP crc", "tEXt crc", "tEXt data", "chunk type"} <= refused
    assert not refused & {"idat crc", "iCCP ok", "tEXt ok"}


def test_batch_threads_then_fork_does_not_deadlock(fork_after: Callable[..., None]) -> None:
    fork_after(
        """
        import clipfast, torch; from PIL import Image
        imgs = [Image.new('RGB', (640, 480), (i, 2, 3)) for i in range(16)]
        a = clipfast.preprocess_batch(imgs, threads=4)
        """,
        "ok = torch.equal(a, clipfast.preprocess_batch(imgs, threads=4))",
    )


def test_preprocess_object_rejects_zero_size_image() -> None:
    with pytest.raises(ImageError):
        transforms.for_resolution(224)(Image.new("RGB", (0, 3)))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_default_threads_follow_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """threads=None uses torch.get_num_threads() workers: the native call's thread count (one
    call for the whole batch) and the pool's size (item by item) are recorded."""
    seen: list[tuple[str, int]] = []
    native = transforms._native.preprocess_into

    def recording(
        items: Any, n_px: int, lut: Any, addr: int, length: int, kind: str, threads: int, *rest: Any
    ) -> Any:
        seen.append(("native", threads))
        return native(items, n_px, lut, addr, length, kind, threads, *rest)

    pools = []

    class Pool(ThreadPoolExecutor):
        def __init__(self, max_workers: int) -> None:
            pools.append(max_workers)
            super().__init__(max_workers=max_workers)

    monkeypatch.setattr(transforms._native, "preprocess_into", recording)
    monkeypatch.setattr(transforms, "ThreadPoolExecutor", Pool)
    imgs = [synthetic(300, 200, "RGB", seed=i) for i in range(5)]
    jpegs = [encode(im, "JPEG") for im in imgs]
    before = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            seen.clear()
            pools.clear()
            decoded = clipfast.preprocess_batch(imgs)
            assert seen == [("native", count)], (count, seen)
            # A BMP (decoded by Pillow) makes the batch run item by item on a pool.
            items = [*jpegs, encode(imgs[0], "BMP")]
            mixed = clipfast.preprocess_batch(items)
            assert pools == ([min(count, len(items))] if count > 1 else []), (count, pools)
            assert torch.equal(decoded, torch.stack([reference(im, 224) for im in imgs]))
            expected = torch.stack([reference(Image.open(io.BytesIO(b)), 224) for b in items])
            assert torch.equal(mixed, expected)
    finally:
        torch.set_num_threads(before)


# --- fast decode mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_px", [224, 336])
def test_fast_decode_is_pillow_draft_then_exact(n_px: int) -> None:
    """decode="fast": a JPEG decoded by Pillow at a reduced DCT scale (draft) that keeps both sides
    >= 2 n_px, then clip's pipeline bit for bit; smaller JPEGs are not reduced."""
    jpegs = [p.read_bytes() for p in PHOTOS if p.suffix == ".jpg"]
    jpegs += [
        encode(synthetic(3000, 1700, "RGB", seed=3), "JPEG", quality=92),
        encode(synthetic(900, 3600, "L", seed=4), "JPEG"),
        encode(synthetic(2000, 2000, "CMYK", seed=5), "JPEG"),
        encode(synthetic(1600, 1400, "RGB", seed=6), "JPEG", progressive=True, subsampling=0),
    ]
    fast = clipfast.preprocess_batch(jpegs, n_px, threads=2, decode="fast")
    exact = clipfast.preprocess_batch(jpegs, n_px, threads=2)
    reduced = 0
    for i, data in enumerate(jpegs):
        img = Image.open(io.BytesIO(data))
        size = img.size
        img.draft(None, (2 * n_px, 2 * n_px))
        img.load()
        reduced += img.size != size
        assert min(img.size) >= 2 * n_px or img.size == size
        assert torch.equal(fast[i], reference(img, n_px)), i
    assert reduced >= 3  # the large synthetic JPEGs (not the 900 px wide one at 336)
    # The approximation, in uint8 levels of the normalised output (docs/preprocess.md).
    std = torch.tensor(transforms.STD).view(1, 3, 1, 1)
    levels = ((fast - exact) * std * 255).abs()
    assert 0 < levels.max().item() <= 16 and levels.mean().item() < 1.0


def test_fast_decode_reduces_mpo_first_frames() -> None:
    """Phones save MPO files (a JPEG plus more frames): Pillow's first frame, reduced like a JPEG."""
    Image.init()
    if "MPO" not in Image.SAVE_ALL:
        pytest.skip("Pillow < 9.3 cannot write the MPO file this test makes")
    first, second = synthetic(2000, 1500, "RGB", seed=7), synthetic(2000, 1500, "RGB", seed=8)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    img = Image.open(io.BytesIO(data))
    assert img.format == "MPO"
    img.draft(None, (448, 448))
    img.load()
    assert img.size == (1000, 750)
    assert torch.equal(clipfast.preprocess_batch([data], decode="fast")[0], reference(img, 224))
    assert torch.equal(clipfast.preprocess_batch([data])[0], reference(Image.open(io.BytesIO(data)), 224))


def test_fast_decode_leaves_other_files_exact() -> None:
    png = (IMAGES / "chelsea.png").read_bytes()
    small = next(p for p in PHOTOS if p.suffix == ".jpg" and min(Image.open(p).size) < 448).read_bytes()
    for data in (png, small):
        assert torch.equal(
            clipfast.preprocess_batch([data], decode="fast"),
            reference(Image.open(io.BytesIO(data)), 224)[None],
        )


def test_fast_decode_bad_inputs() -> None:
    jpeg = next(p for p in PHOTOS if p.suffix == ".jpg").read_bytes()
    for bad in (jpeg[: len(jpeg) // 3], b"\xff\xd8\xff\xe0 broken", jpeg[:2]):
        with pytest.raises(ImageError, match=r"item 1\b"):
            clipfast.preprocess_batch([jpeg, bad], decode="fast", threads=2)


def test_fast_decode_honours_max_image_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    jpeg = next(p for p in PHOTOS if p.suffix == ".jpg").read_bytes()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    out, bad = clipfast.preprocess_batch([jpeg], decode="fast", on_error="skip")
    assert bad == [0] and out.shape[0] == 0
