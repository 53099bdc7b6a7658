"""clip's preprocessing: Resize(n_px, bicubic) on the shorter side, CenterCrop(n_px), RGB, ToTensor,
Normalize with CLIP's mean and std. Same results as openai/CLIP's ``_transform(n_px)``, bit for bit,
without importing torchvision.

The steps stay public Python objects (``Compose.transforms``) that code can read or swap. While the
list is clip's standard one, ``Compose`` runs all five steps at once in Rust (``clipfast._native``),
reading Pillow's pixel rows in place and computing only the pixels the centre crop keeps; when a
step is swapped, it runs the steps one by one, as torchvision's Compose does.
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import PIL  # only the package (its version); PIL.Image is imported when first used
import torch

from . import _native
from .errors import ImageError
from .formats import PreprocessConfig

__all__ = [
    "MEAN",
    "STD",
    "CenterCrop",
    "CenterCropOrPad",
    "Compose",
    "ConvertToRGB",
    "Normalize",
    "Resize",
    "ResizeKeepRatio",
    "ToTensor",
    "for_config",
    "for_resolution",
    "preprocess_batch",
]


class _ImportedOnFirstUse:
    """Stands for a module until an attribute of it is first read, then imports it and puts the
    module itself in its place.

    ``PIL.Image`` costs ~8 ms of imports (its Exif and TIFF tag tables), which ``clipfast.load``
    would otherwise pay for the preprocess it returns, in the middle of the weights' conversion,
    whose page faults slow it to about three times that (on two cores, 2026-12-07). Nothing
    needs it until an image arrives, and a caller holding a PIL image has imported it already."""

    def __init__(self, name: str, alias: str) -> None:
        self._name = name
        self._alias = alias

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self._name)
        globals()[self._alias] = module
        return getattr(module, attribute)


if TYPE_CHECKING:
    from PIL import Image
else:
    Image: ModuleType = _ImportedOnFirstUse("PIL.Image", "Image")


def _pillow_version() -> tuple[int, ...]:
    """The installed Pillow's (major, minor)."""
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in PIL.__version__.split(".")[:2]]
    return tuple(parts)


_PILLOW = _pillow_version()
# Pillow 13 resizes tall images with the vertical pass first (python-pillow/Pillow#9549), older
# Pillow horizontal first; the rounding between the passes makes the order visible in the pixels.
_native.set_pillow_vertical_first(_PILLOW >= (13,))

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(width: int, height: int, n_px: int) -> tuple[int, int]:
    """torchvision's Resize(int): the short side becomes n_px, the long side is truncated."""
    if width <= height:
        return n_px, int(n_px * height / width)
    return int(n_px * width / height), n_px


class _PillowFilter(NamedTuple):
    """Pillow's resampling filter of this name (``Image.Resampling[name]``), looked up when the
    attribute holding it is first read, so that building a preprocess imports no ``PIL.Image``."""

    name: str


class _Interpolation:
    """The ``interpolation`` attribute of the resize steps: the value given, where a
    ``_PillowFilter`` stands for Pillow's constant until it is read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._key = f"_{name}"

    def __get__(self, step: Any, owner: type | None = None) -> Any:
        if step is None:
            return self
        value = step.__dict__[self._key]
        if isinstance(value, _PillowFilter):
            value = step.__dict__[self._key] = Image.Resampling[value.name]
        return value

    def __set__(self, step: Any, value: Any) -> None:
        step.__dict__[self._key] = value


_BICUBIC = _PillowFilter("BICUBIC")


def _pillow_filter(interpolation: Any) -> Any:
    """Pillow's filter for an ``interpolation`` given as Pillow's constant or as torchvision's
    ``InterpolationMode`` (whose value names it), as torchvision's Resize takes either."""
    name = getattr(interpolation, "value", None)
    if isinstance(name, str):
        try:
            return Image.Resampling[name.upper()]
        except KeyError:
            raise ValueError(f"interpolation {interpolation!r} has no Pillow filter") from None
    return interpolation


class Resize:
    """Resize with Pillow's bicubic filter, as torchvision's Resize on a PIL image: an int (or a
    one-element sequence) is the shorter side (no-op when it already matches), the longer side then
    capped at ``max_size`` if given; ``(h, w)`` is the exact size. ``antialias`` is kept as
    torchvision keeps it: a PIL image is always resized with antialiasing."""

    interpolation = _Interpolation()

    def __init__(
        self,
        size: int | Sequence[int],
        interpolation: Any = _BICUBIC,
        max_size: int | None = None,
        antialias: bool | None = True,
    ) -> None:
        if max_size is not None and not (isinstance(size, int) or len(size) == 1):
            raise ValueError(
                "max_size should only be passed if size specifies the length of the smaller edge, "
                f"i.e. size should be an int or a sequence of length 1, not {size!r}"
            )
        self.size = size
        self.max_size = max_size
        self.interpolation = interpolation
        self.antialias = antialias

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if isinstance(self.size, int) or len(self.size) == 1:
            short = self.size if isinstance(self.size, int) else int(self.size[0])
            new = resized_size(w, h, short)
            if self.max_size is not None:
                if self.max_size <= short:
                    raise ValueError(
                        f"max_size = {self.max_size} must be strictly greater than the requested "
                        f"size for the smaller edge size = {[short]}"
                    )
                new_short, new_long = min(new), max(new)
                if new_long > self.max_size:
                    new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
                new = (new_short, new_long) if w <= h else (new_long, new_short)
        elif len(self.size) == 2:
            new = (int(self.size[1]), int(self.size[0]))
        else:
            raise ValueError(f"Resize size must be an int, (s,) or (h, w), not {self.size!r}")
        if new == (w, h):
            return img
        return img.resize(new, _pillow_filter(self.interpolation))

    def __repr__(self) -> str:
        return (
            f"Resize(size={self.size}, interpolation={_interpolation_name(self.interpolation)}, "
            f"max_size={self.max_size}, antialias={self.antialias})"
        )


def _interpolation_name(interpolation: Any) -> str:
    value = getattr(interpolation, "value", interpolation)
    if isinstance(value, str):
        return value
    try:
        return Image.Resampling(value).name.lower()
    except ValueError:
        return str(interpolation)


class ResizeKeepRatio:
    """open_clip's resize for ``resize_mode="longest"``: scale so that the longer side fits ``size``
    (``longest=1``; 0 is the shorter side), keeping the aspect ratio; the new sides are rounded."""

    interpolation = _Interpolation()

    def __init__(
        self, size: int | Sequence[int], interpolation: Any = _BICUBIC, longest: float = 1.0
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.interpolation = interpolation
        self.longest = float(longest)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        ratio_h, ratio_w = h / self.size[0], w / self.size[1]
        ratio = max(ratio_h, ratio_w) * self.longest + min(ratio_h, ratio_w) * (1.0 - self.longest)
        new = (round(w / ratio), round(h / ratio))
        if new == (w, h):
            return img
        return img.resize(new, _pillow_filter(self.interpolation))

    def __repr__(self) -> str:
        name = _interpolation_name(self.interpolation)
        return f"ResizeKeepRatio(size={self.size}, interpolation={name}, longest={self.longest:.3f})"


class CenterCropOrPad:
    """open_clip's ``CenterCropOrPad``: pad to at least ``size`` with ``fill`` (as torchvision pads
    a PIL image), then crop the centre ``(h, w)``."""

    def __init__(self, size: int | Sequence[int], fill: int = 0) -> None:
        self.size = CenterCrop(size).size
        self.fill = fill

    def __call__(self, img: Image.Image) -> Image.Image:
        from PIL import ImageOps

        w, h = img.size
        nh, nw = self.size
        if nw > w or nh > h:
            border = (
                (nw - w) // 2 if nw > w else 0,
                (nh - h) // 2 if nh > h else 0,
                (nw - w + 1) // 2 if nw > w else 0,
                (nh - h + 1) // 2 if nh > h else 0,
            )
            bands = len(img.getbands())
            fill: Any = self.fill if bands == 1 else (self.fill,) * bands
            if img.mode != "F":
                fill = int(fill) if bands == 1 else tuple(int(v) for v in fill)
            palette = img.getpalette() if img.mode == "P" else None
            img = ImageOps.expand(img, border=border, fill=fill)
            if palette is not None:
                img.putpalette(palette)
            w, h = img.size
            if (w, h) == (nw, nh):
                return img
        return CenterCrop(self.size)(img)

    def __repr__(self) -> str:
        return f"CenterCropOrPad(size={self.size})"


class CenterCrop:
    """Crop the centre ``(height, width)`` region, offsets rounded as torchvision rounds them.

    ``size`` is an int (a square) or ``(h, w)``; like torchvision's, the attribute is ``(h, w)``.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        if isinstance(size, int):
            self.size: tuple[int, int] = (size, size)
        else:
            dims = tuple(int(v) for v in size)
            if len(dims) == 1:
                dims = (dims[0], dims[0])
            if len(dims) != 2:
                raise ValueError(f"CenterCrop size must be an int or (h, w), not {size!r}")
            self.size = (dims[0], dims[1])

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        nh, nw = self.size
        if w < nw or h < nh:  # torchvision pads with zeros first; after Resize this cannot happen
            padded = Image.new(img.mode, (max(w, nw), max(h, nh)))
            padded.paste(img, ((max(w, nw) - w) // 2, (max(h, nh) - h) // 2))
            img, (w, h) = padded, padded.size
        top = round((h - nh) / 2.0)
        left = round((w - nw) / 2.0)
        return img.crop((left, top, left + nw, top + nh))

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class ConvertToRGB:
    """``image.convert("RGB")``, applied after the resize as openai/CLIP does."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.convert("RGB")

    def __repr__(self) -> str:
        return "ConvertToRGB()"


class ToTensor:
    """HWC uint8 -> CHW float32 in [0, 1] (true division by 255)."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        return t.to(torch.float32).div(255)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """(x - mean) / std per channel, in float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
        return t.sub(mean).div(std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Compose:
    """Apply ``transforms`` in order; like torchvision's Compose, the list is public and editable.

    While the list is clip's standard pipeline (Resize(n), CenterCrop(n), ConvertToRGB, ToTensor,
    Normalize) and the input is a PIL image, all steps run at once in Rust with identical results.
    """

    def __init__(self, transforms: list[Any]) -> None:
        self.transforms = transforms

    def __call__(self, img: Any) -> Any:
        if isinstance(img, Image.Image):
            plan = _standard_plan(self.transforms)
            if plan is not None:
                n_px, mean, std = plan
                return _preprocess_one(img, n_px, mean, std)
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"Compose({inner}\n)"


def for_resolution(n_px: int) -> Compose:
    """The preprocess object ``clipfast.load`` returns for a model of input resolution ``n_px``."""
    return Compose([Resize(n_px), CenterCrop(n_px), ConvertToRGB(), ToTensor(), Normalize(MEAN, STD)])


def for_config(config: PreprocessConfig, n_px: int | None = None) -> Compose:
    """open_clip's inference preprocessing for ``config`` (its ``image_transform``), for a model
    of input resolution ``n_px`` (default ``config.size``). ``resize_mode="shortest"`` with bicubic
    resampling is clip's pipeline with the configuration's mean and std, which runs in Rust."""
    size = n_px if n_px is not None else config.size
    if size is None:
        raise ValueError("for_config needs n_px where the configuration has no size")
    interpolation = _PillowFilter("BILINEAR") if config.interpolation == "bilinear" else _BICUBIC
    tail = [ConvertToRGB(), ToTensor(), Normalize(config.mean, config.std)]
    if config.resize_mode == "squash":
        return Compose([Resize((size, size), interpolation), *tail])
    if config.resize_mode == "longest":
        return Compose(
            [ResizeKeepRatio(size, interpolation, longest=1), CenterCropOrPad(size, config.fill_color), *tail]
        )
    if config.resize_mode != "shortest":
        raise ValueError(f"resize_mode must be shortest, longest or squash, not {config.resize_mode!r}")
    return Compose([Resize(size, interpolation), CenterCrop(size), *tail])


# --- the Rust fast path -------------------------------------------------------------------------

#: Modes the Rust code resizes and converts itself, reading Pillow's rows in place.
_DIRECT_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
#: Modes Rust resizes exactly; Pillow converts the small n x n result to RGB. I;16 only from
#: Pillow 12.3, whose rounding the Rust code reproduces: 11.0-12.2 round upscaled I;16 pixels
#: otherwise, and Pillow < 11 cannot resize I;16 with BICUBIC at all (clip raises there, and so
#: does clipfast, by running Pillow's own steps).
_RESIZED_MODES = frozenset({"CMYK", "I", "F"} | ({"I;16"} if _PILLOW >= (12, 3) else set()))
#: Mode I pixels at or beyond this magnitude go to Pillow: a bicubic pass can overshoot its inputs
#: by up to ~27% (so ~61% over two passes), and a sum past int32 is stored by Pillow's C cast,
#: which is undefined behaviour (x86-64 builds wrap it modulo 2**32) where Rust saturates.
_I_EXACT_LIMIT = 1 << 29
_OUTPUT_KINDS = {torch.float32: "float32", torch.float16: "float16", torch.uint8: "uint8"}
_SIMD = os.environ.get("CLIPFAST_SCALAR", "") in ("", "0")
#: Item modes whose pixels are encoded bytes that Rust decodes (Pillow takes over on failure).
_ENCODED_MODES = frozenset({"png", "jpeg", "jpeg-fast"})


def _standard_plan(steps: list[Any]) -> tuple[int, tuple[float, ...], tuple[float, ...]] | None:
    """(n_px, mean, std) when ``steps`` is exactly clip's pipeline, else None (run step by step)."""
    if len(steps) != 5:
        return None
    resize, crop, rgb, to_tensor, normalize = steps
    if not (
        type(resize) is Resize
        and type(crop) is CenterCrop
        and type(rgb) is ConvertToRGB
        and type(to_tensor) is ToTensor
        and type(normalize) is Normalize
    ):
        return None
    bicubic = resize.interpolation in (Image.Resampling.BICUBIC, "bicubic") or (
        getattr(resize.interpolation, "value", None) == "bicubic"
    )
    n_px = resize.size
    if not (bicubic and isinstance(n_px, int) and n_px > 0 and crop.size == (n_px, n_px)) or resize.max_size:
        return None
    if len(normalize.mean) != 3 or len(normalize.std) != 3:
        return None
    return n_px, tuple(normalize.mean), tuple(normalize.std)


def _lut(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype) -> bytes:
    """ToTensor + Normalize for every byte value of each channel, computed with torch's own ops
    (built once per (mean, std, dtype): ``_normalization`` keeps it)."""
    values = torch.arange(256, dtype=torch.uint8).expand(3, 1, 256).contiguous()
    norm = Normalize(mean, std)(values.to(torch.float32).div(255))
    if dtype != torch.float32:
        norm = norm.to(dtype)
    return norm.contiguous().numpy().tobytes()


class _Normalization(NamedTuple):
    """ToTensor + Normalize for the native call: the table, and for float32 output the constants
    (Rust computes with them only after checking they reproduce the table bit for bit)."""

    table: bytes
    mean_std: tuple[tuple[float, float, float], tuple[float, float, float]] | None


_NORMALIZATIONS: dict[tuple[tuple[float, ...], tuple[float, ...], torch.dtype], _Normalization] = {}


def _normalization(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype) -> _Normalization:
    key = (mean, std, dtype)
    norm = _NORMALIZATIONS.get(key)
    if norm is None:
        norm = _NORMALIZATIONS[key] = _new_normalization(mean, std, dtype)
    return norm


def _new_normalization(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype) -> _Normalization:
    table = _lut(mean, std, dtype)
    if dtype != torch.float32 or len(mean) != 3 or len(std) != 3:
        return _Normalization(table, None)
    try:
        m = (float(mean[0]), float(mean[1]), float(mean[2]))
        s = (float(std[0]), float(std[1]), float(std[2]))
    except (TypeError, ValueError):  # constants torch accepted but float() does not: table only
        return _Normalization(table, None)
    return _Normalization(table, (m, s))


def _pillow_steps(img: Image.Image, n_px: int) -> Image.Image:
    """Resize, crop and convert with Pillow itself: modes the Rust path does not cover (P, 1, ...)."""
    return ConvertToRGB()(CenterCrop(n_px)(Resize(n_px)(img)))


def _may_overflow_int32(img: Image.Image) -> bool:
    """Whether resizing this mode I image could take a pixel past int32 (Pillow's result is then
    its C compiler's, so Pillow resizes it)."""
    lo, hi = img.getextrema()  # (min, max) for a single-band image
    return not (isinstance(lo, int) and isinstance(hi, int) and -_I_EXACT_LIMIT < lo and hi < _I_EXACT_LIMIT)


def _item(img: Image.Image, n_px: int) -> tuple[Any, int, int, str]:
    """The (pixels, width, height, mode) tuple Rust reads for one decoded image."""
    img.load()
    w, h = img.size
    mode = img.mode
    if w == 0 or h == 0:
        raise ImageError(f"image has zero size ({w}x{h})")
    if mode in _DIRECT_MODES:
        return _pixels(img), w, h, mode
    if mode in _RESIZED_MODES and not (mode == "I" and _may_overflow_int32(img)):
        native = _native.resize_crop(_pixels(img), w, h, mode, n_px, _SIMD)
        img = Image.frombytes(mode, (n_px, n_px), native).convert("RGB")
    else:
        img = _pillow_steps(img, n_px)
    return img.tobytes(), n_px, n_px, "RGB"


def _array_item(arr: np.ndarray, n_px: int) -> tuple[Any, int, int, str]:
    """A numpy array as Image.fromarray would read it: HW (L) or HWC with 1-4 uint8 channels."""
    if arr.dtype != np.uint8:
        return _item(Image.fromarray(arr), n_px)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    modes = {2: "L"} if arr.ndim == 2 else {3: {2: "LA", 3: "RGB", 4: "RGBA"}.get(arr.shape[2], "")}
    mode = modes.get(arr.ndim, "")
    if not mode:
        raise ImageError(f"array of shape {arr.shape} is not an HWC image")
    h, w = arr.shape[:2]
    if w == 0 or h == 0:
        raise ImageError(f"image has zero size ({w}x{h})")
    return np.ascontiguousarray(arr).tobytes(), w, h, mode


def _probe_capsule() -> bool:
    """Whether this Pillow's image struct is one the Rust reader recognises (else use tobytes)."""
    try:
        img = Image.new("RGB", (3, 2), (1, 2, 3))
        native = _native.resize_crop(img.getim(), 3, 2, "RGB", 2, False)
        return bool(native == img.crop((0, 0, 2, 2)).tobytes())
    except Exception:
        return False


_CAPSULE_STATE: list[bool] = []  # filled on first use: [whether Rust may read Pillow's rows in place]


def _pixels(img: Image.Image) -> Any:
    """Pillow's own rows (zero copy) when the struct layout is recognised, else packed bytes."""
    if not _CAPSULE_STATE:
        _CAPSULE_STATE.append(_probe_capsule())
    return img.getim() if _CAPSULE_STATE[0] else img.tobytes()


def _probe_jpegs() -> list[tuple[bytes, int, bool]]:
    """Small JPEGs (bytes, n_px, fast) that take every route of the Rust JPEG path: column crop,
    row skip (4:2:2 and 4:2:0), vertical-first resize, 4:4:4, grey, progressive, restart markers,
    DCT scaling."""
    rng = np.random.default_rng(7)

    def photo(w: int, h: int, mode: str) -> Image.Image:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 3 + yy) % 256, (yy * 2) % 256, (xx + 2 * yy) % 256], axis=-1)
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        return Image.fromarray(noisy).convert(mode)

    cases = [
        (photo(300, 110, "RGB"), {"subsampling": 2}, 32, False),
        (photo(70, 260, "RGB"), {"subsampling": 1, "restart_marker_rows": 1}, 32, False),
        (photo(90, 400, "RGB"), {"subsampling": 2}, 32, False),
        (photo(150, 190, "L"), {}, 32, False),
        (photo(130, 170, "RGB"), {"subsampling": 0, "progressive": True}, 32, False),
        (photo(300, 270, "RGB"), {"subsampling": 2}, 32, True),
    ]
    out = []
    for img, params, n_px, fast in cases:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85, **params)
        out.append((buf.getvalue(), n_px, fast))
    return out


def _use_pillow_libjpeg() -> bool:
    """Point Rust at the libjpeg Pillow's ``_imaging`` was linked with, then check on small JPEGs
    that decoding there gives Pillow's pixels (else JPEGs stay with Pillow)."""
    try:
        from PIL import _imaging

        if _native.use_pillow_libjpeg(_imaging.__file__) is not None:
            return False
        norm = _normalization(MEAN, STD, torch.float32)
        for data, n_px, fast in _probe_jpegs():
            ours = torch.empty((1, 3, n_px, n_px))
            theirs = torch.empty((1, 3, n_px, n_px))
            mode = "jpeg-fast" if fast else "jpeg"
            if _run([(data, 0, 0, mode)], ours, n_px, norm, 1)[0] is not None:
                return False
            pillow = _pillow_item(data, n_px, fast)
            if _run([pillow], theirs, n_px, norm, 1)[0] is not None or not torch.equal(ours, theirs):
                return False
        return True
    except Exception:
        return False


_JPEG_STATE: list[bool] = []  # filled on first use: [whether Rust decodes JPEGs]


def _jpeg_in_rust() -> bool:
    if not _JPEG_STATE:
        _JPEG_STATE.append(_use_pillow_libjpeg())
    return _JPEG_STATE[0]


def _new_output(count: int, n_px: int, dtype: torch.dtype) -> torch.Tensor:
    if dtype not in _OUTPUT_KINDS:
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.uint8, not {dtype}")
    return torch.empty((count, 3, n_px, n_px), dtype=dtype)


def _run(
    items: list[tuple[Any, int, int, str]],
    out: torch.Tensor,
    n_px: int,
    norm: _Normalization,
    threads: int,
) -> list[str | None]:
    limit = Image.MAX_IMAGE_PIXELS
    return _native.preprocess_into(
        items,
        n_px,
        norm.table,
        out.data_ptr(),
        out.numel(),
        _OUTPUT_KINDS[out.dtype],
        threads,
        _SIMD,
        None if limit is None else int(limit),
        norm.mean_std,
    )


def _preprocess_one(
    img: Image.Image, n_px: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """clip's whole pipeline for one PIL image, in Rust, into a new float32 [3, n_px, n_px] tensor
    (the per-call path of ``Compose``: no batch bookkeeping)."""
    out = torch.empty((3, n_px, n_px), dtype=torch.float32)
    err = _run([_item(img, n_px)], out, n_px, _normalization(mean, std, torch.float32), 1)[0]
    if err is not None:
        raise ImageError(f"item 0: {err}")
    return out


def _decode(item: Any, reduce_to: int | None = None) -> Image.Image:
    """Open a path or encoded bytes with Pillow (the decoder clip's users run). With ``reduce_to``,
    a JPEG is decoded at 1/2, 1/4 or 1/8 of its size in libjpeg-turbo's DCT domain where both
    sides stay at least ``reduce_to`` (Pillow's ``draft``): much less work, approximate pixels."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(item)))
    else:
        img = Image.open(os.fspath(item))
    # Pillow itself only warns between MAX_IMAGE_PIXELS and twice that; a batch refuses both.
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit is not None and w * h > limit:
        img.close()
        raise ImageError(f"{w}x{h} = {w * h} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS ({limit})")
    if reduce_to is not None and img.format in ("JPEG", "MPO"):  # MPO: phones' JPEG + extra frames
        img.draft(None, (reduce_to, reduce_to))
    img.load()
    return img


def _is_direct_png(data: bytes) -> bool:
    """An 8-bit gray, gray + alpha, RGB or RGBA PNG (IHDR's bit depth and colour type): Pillow opens
    these as L, LA, RGB or RGBA, and Rust decodes them to the same pixels (PNG is lossless)."""
    return (
        len(data) > 33
        and data[:8] == b"\x89PNG\r\n\x1a\n"
        and data[12:16] == b"IHDR"
        and data[24] == 8
        and data[25] in (0, 2, 4, 6)
    )


def _encoded(item: Any) -> bytes | None:
    """The encoded bytes of a bytes-like item, a file path or a binary file object (read from its
    current position, as ``Image.open`` reads it); None for other objects."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as f:
            return f.read()
    read = getattr(item, "read", None)
    if callable(read):
        data = read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"{type(item).__name__}.read() returned {type(data).__name__}, not bytes")
        return bytes(data)
    return None


def _rust_mode(data: bytes, fast: bool) -> str | None:
    """The item mode under which Rust decodes these bytes itself ("png", "jpeg", "jpeg-fast"),
    or None for files Pillow decodes (Pillow also takes over any file Rust refuses)."""
    if _is_direct_png(data):
        return "png"
    if data[:3] == b"\xff\xd8\xff" and _jpeg_in_rust():
        return "jpeg-fast" if fast else "jpeg"
    return None


def _prepare(item: Any, n_px: int, fast: bool) -> tuple[Any, int, int, str]:
    if isinstance(item, Image.Image):
        return _item(item, n_px)
    if isinstance(item, np.ndarray):
        return _array_item(item, n_px)
    data = _encoded(item)
    if data is None:
        raise ImageError(f"cannot preprocess an object of type {type(item).__name__}")
    # Decoded in Rust, on the worker threads; any Rust decode failure goes back to Pillow.
    mode = _rust_mode(data, fast)
    if mode is not None:
        return data, 0, 0, mode
    return _pillow_item(data, n_px, fast)


def _pillow_item(data: bytes, n_px: int, fast: bool) -> tuple[Any, int, int, str]:
    """The item for encoded bytes decoded by Pillow. Fast: a reduced JPEG decode, still twice the
    output size, so the bicubic resize antialiases."""
    return _item(_decode(data, 2 * n_px if fast else None), n_px)


def preprocess_batch(
    items: Sequence[Any],
    n_px: int = 224,
    *,
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    on_error: Literal["raise", "skip"] = "raise",
    decode: Literal["exact", "fast"] = "exact",
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> Any:
    """Preprocess many images into one ``Tensor[B, 3, n_px, n_px]``, exactly as clip's preprocess.

    ``items`` may hold PIL images, numpy arrays (read as ``Image.fromarray`` reads them), file
    paths, binary file objects (``open(p, "rb")``, ``io.BytesIO``) or encoded image bytes. Work
    runs on ``threads`` threads (default: ``torch.get_num_threads()``) with the GIL released.
    ``dtype`` is float32 (default), float16 (the float32 result rounded) or uint8 (resized and
    cropped RGB bytes, not normalised). ``mean`` / ``std`` are the Normalize constants per RGB
    channel (default clip's), computed as torchvision's ``Normalize`` in float32. With
    ``on_error="skip"`` the result is ``(tensor_of_good_items, bad_indices)``; with "raise" a bad
    item raises :class:`clipfast.ImageError` naming its index.

    8-bit PNGs are decoded in Rust (lossless, so Pillow's pixels); JPEGs are decoded in Rust by
    the libjpeg-turbo Pillow itself uses, with Pillow's settings, only the rows and columns the
    crop reads (checked against Pillow once per process; a file libjpeg warns about goes to
    Pillow); other files by Pillow. ``decode="fast"`` decodes a JPEG that is at least four times
    ``n_px`` on both sides at 1/2, 1/4 or 1/8 scale in libjpeg-turbo's DCT domain (Pillow's
    ``draft``), keeping both sides >= ``2 * n_px`` so that the bicubic resize still does the
    antialiasing: much faster on large photos, a few levels from the exact result (see
    docs/preprocess.md); smaller JPEGs and everything else stay exact.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", not {on_error!r}')
    if decode not in ("exact", "fast"):
        raise ValueError(f'decode must be "exact" or "fast", not {decode!r}')
    fast = decode == "fast"
    if not isinstance(n_px, int) or n_px <= 0:
        raise ValueError(f"n_px must be a positive int, not {n_px!r}")
    items = list(items)
    workers = max(1, int(threads) if threads is not None else torch.get_num_threads())
    norm = _normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std), dtype)
    out = _new_output(len(items), n_px, dtype)
    errors: list[str | None] = [None] * len(items)

    # Files are read up front; when every item is in memory or a file Rust decodes (PNG, JPEG),
    # the whole batch is one native call on `workers` threads.
    inputs: list[Any] = list(items)
    rust_only = True
    for i, item in enumerate(items):
        if isinstance(item, (Image.Image, np.ndarray)):
            continue
        try:
            data = _encoded(item)
        except Exception as exc:  # unreadable path: reported per item (typed below)
            errors[i] = f"{type(exc).__name__}: {exc}"
            continue
        if data is not None:
            inputs[i] = data
            rust_only = rust_only and _rust_mode(data, fast) is not None

    def prepare(i: int) -> tuple[Any, int, int, str] | None:
        if errors[i] is not None:
            return None
        try:
            return _prepare(inputs[i], n_px, fast)
        except Exception as exc:  # any failure is reported per item (typed below)
            errors[i] = f"{type(exc).__name__}: {exc}"
            return None

    def with_pillow(i: int) -> None:
        # A file the Rust decoder refused (animated, damaged, CMYK, a libjpeg warning ...):
        # Pillow decides what it is, giving its own pixels or its own error.
        try:
            prepared = _pillow_item(inputs[i], n_px, fast)
        except Exception as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"
            return
        errors[i] = _run([prepared], out[i : i + 1], n_px, norm, 1)[0]

    def work(i: int) -> None:
        prepared = prepare(i)
        if prepared is None:
            return
        err = _run([prepared], out[i : i + 1], n_px, norm, 1)[0]
        if err is not None and prepared[3] in _ENCODED_MODES:
            with_pillow(i)
        elif err is not None:
            errors[i] = err

    def on_threads(jobs: list[int], fn: Callable[[int], None]) -> None:
        if workers > 1 and len(jobs) > 1:
            # Each worker decodes one item (Pillow releases the GIL while decoding) and preprocesses
            # it straight into its slot (Rust releases the GIL), so decoded images never pile up.
            # The pool lives only for this call, so a later fork inherits no threads. On Ctrl-C
            # (or any error) the items not started yet are dropped: only those running finish.
            pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)))
            try:
                list(pool.map(fn, jobs))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            # One thread: each image is preprocessed right after its decode, while its pixels are
            # still in the cache, and freed before the next one is decoded.
            for i in jobs:
                fn(i)

    if not items:
        pass  # nothing to run: the native call refuses a zero-size output
    elif rust_only:
        placeholder = (b"\0\0\0", 1, 1, "RGB")
        prepared = [prepare(i) for i in range(len(items))]
        batch = [p if p is not None else placeholder for p in prepared]
        run_errors = _run(batch, out, n_px, norm, workers)
        retry = []
        for i, err in enumerate(run_errors):
            if errors[i] is None and err is not None:
                if batch[i][3] in _ENCODED_MODES:
                    retry.append(i)
                else:
                    errors[i] = err
        on_threads(retry, with_pillow)
    else:
        on_threads(list(range(len(items))), work)
    bad = [i for i, e in enumerate(errors) if e is not None]
    if on_error == "raise":
        if bad:
            raise ImageError(f"item {bad[0]}: {errors[bad[0]]}")
        return out
    if bad:
        keep = torch.tensor([i for i in range(len(items)) if errors[i] is None], dtype=torch.long)
        out = out.index_select(0, keep)
    return out, bad
