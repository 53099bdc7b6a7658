"""Truncation and bit-flip sweeps over small real files of every format clipfast reads.

- Every prefix (every ``--stride``-th length, plus every length near the ends, where the
  structures are) of a small checkpoint of each format (torch.save, TorchScript, safetensors,
  npz stored and deflated) gives a typed error (``CheckpointError``), and of an image of each
  format (PNG decoded in Rust and by Pillow, JPEG, GIF, BMP, WebP, TIFF) what clip's pipeline gives
  on the same bytes: the same tensor, or an ``ImageError`` where it raises. Never a crash or a hang.
- Single bit flips across the zip headers (local headers, central directory, end records) of the
  torch.save and TorchScript archives, across their pickles (with the CRC-32 made to match, so
  that the unpickler sees the flipped pickle; without, every flip is a CRC error), and across the
  safetensors header: a typed error, the original model, or a model in which only one tensor
  differs (values, stride or offset: the tensor whose bytes or description were flipped).

Run as a child process (a crash or a hang shows as its exit status or the caller's timeout):

    .venv/bin/python fuzz/sweeps.py [--stride 16] [--flip-stride 1] [--bits 1] [--json counts.json]

``make fuzz`` runs it in full; tests/test_sweeps.py with a stride on every ``make test``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import struct
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import clipfast  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from clipfast import _testing  # noqa: E402
from clipfast.checkpoint import read_state_dict  # noqa: E402
from clipfast.errors import ArchitectureError, CheckpointError  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import differential  # noqa: E402

#: A complete OpenAI-structured ViT, as small as one can be (a few hundred KB as fp16).
SPEC = _testing.ModelSpec(
    embed_dim=16,
    image_resolution=32,
    vision_layers=1,
    vision_width=64,
    vision_patch_size=16,
    context_length=8,
    vocab_size=50,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=1,
)
TYPED = (CheckpointError, ArchitectureError)


class Failure(AssertionError):
    pass


def checkpoints(folder: Path) -> dict[str, Path]:
    sd = _testing.write_state_dict(folder / "sd.pt", SPEC)
    jit = _testing.write_openai_archive(folder / "jit.pt", SPEC)
    state = torch.load(sd, weights_only=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    arrays = {k: v.float().numpy() for k, v in list(state.items())[:12]}
    np.savez(folder / "stored.npz", **arrays)
    np.savez_compressed(folder / "deflated.npz", **arrays)
    return {
        "torch.save": sd,
        "torchscript": jit,
        "safetensors": folder / "model.safetensors",
        "npz": folder / "stored.npz",
        "npz-deflated": folder / "deflated.npz",
    }


def images() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 255, size=(40, 56, 3)).astype(np.uint8))
    out = {}
    for name, img, fmt, params in (
        ("png", rgb, "PNG", {}),
        ("png-rgba", rgb.convert("RGBA"), "PNG", {}),
        ("png-palette", rgb.convert("P"), "PNG", {}),
        ("jpeg", rgb, "JPEG", {"quality": 80}),
        ("jpeg-progressive", rgb, "JPEG", {"progressive": True}),
        ("gif", rgb.convert("P"), "GIF", {}),
        ("bmp", rgb, "BMP", {}),
        ("webp", rgb, "WEBP", {"quality": 80}),
        ("tiff", rgb, "TIFF", {}),
    ):
        buf = io.BytesIO()
        img.save(buf, fmt, **params)
        out[name] = buf.getvalue()
    return out


def prefixes(n: int, stride: int, dense: int = 512) -> list[int]:
    """Every length near either end (``dense`` bytes), every ``stride``-th elsewhere."""
    keep = set(range(min(n, dense))) | set(range(max(0, n - dense), n)) | set(range(0, n, stride))
    if stride > 1:  # a sample: thin the dense ends too
        keep = {k for k in keep if k % max(1, stride // 8) == 0 or k < 64 or k > n - 64}
    return sorted(keep)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """The names whose tensors differ (dtype, shape, stride, values); [""] when the keys differ."""
    if list(a) != list(b):
        return [""]
    return [
        k
        for k in a
        if a[k].dtype != b[k].dtype
        or a[k].shape != b[k].shape
        or a[k].stride() != b[k].stride()
        or not torch.equal(a[k], b[k])
    ]


_MODELS: dict[str, dict[str, torch.Tensor]] = {}


def model_state(path: Path) -> dict[str, torch.Tensor]:
    model, _ = clipfast.load(str(path), device="cpu")
    return dict(model.state_dict())


def read_outcome(path: Path, original: dict[str, torch.Tensor], original_path: Path) -> str:
    """'error' (typed), 'same', 'one' (one tensor differs), 'same model' (the file reads
    differently, the model it loads as does not); anything else raises Failure."""
    try:
        got = read_state_dict(path)
    except TYPED:
        return "error"
    except Exception as err:
        raise Failure(f"{path.name}: {type(err).__name__}: {err}") from err
    diff = same(original, got)
    if not diff:
        return "same"
    if len(diff) == 1 and diff[0]:
        return "one"
    # More changed (names, several tensors): the model it loads as must be the original's, or
    # differ in one tensor, or the load must be refused.
    try:
        loaded = model_state(path)
    except TYPED:
        return "error"
    except Exception as err:
        raise Failure(f"{path.name}: load: {type(err).__name__}: {err}") from err
    key = str(original_path)
    if key not in _MODELS:
        _MODELS[key] = model_state(original_path)
    model_diff = same(_MODELS[key], loaded)
    if not model_diff:
        return "same model"
    if len(model_diff) == 1 and model_diff[0]:
        return "one"
    raise Failure(f"{path.name}: a model whose tensors {model_diff[:4]} differ from the original")


def zip_header_bytes(data: bytes) -> list[int]:
    """Offsets of every zip header byte: local headers (with name and extra), central directory
    and end records."""
    out: list[int] = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        start_dir = z.start_dir  # type: ignore[attr-defined]
    for info in infos:
        at = info.header_offset
        name_len, extra_len = struct.unpack("<HH", data[at + 26 : at + 30])
        out.extend(range(at, at + 30 + name_len + extra_len))
    out.extend(range(start_dir, len(data)))
    return out


def pickle_span(data: bytes) -> tuple[zipfile.ZipInfo, int, int]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[at + 26 : at + 30])
    start = at + 30 + name_len + extra_len
    return info, start, start + info.compress_size


def with_crc(data: bytearray, info: zipfile.ZipInfo, start: int, end: int) -> None:
    """Rewrites the record's CRC-32 in its local header and central directory entry."""
    crc = struct.pack("<I", zlib.crc32(bytes(data[start:end])))
    data[info.header_offset + 14 : info.header_offset + 18] = crc
    central = data.find(b"PK\x01\x02" + data[info.header_offset + 4 : info.header_offset + 6])
    while central != -1:
        name_len = struct.unpack("<H", data[central + 28 : central + 30])[0]
        if data[central + 46 : central + 46 + name_len] == info.filename.encode():
            data[central + 16 : central + 20] = crc
            return
        central = data.find(b"PK\x01\x02", central + 4)


def sweep(stride: int, flip_stride: int, bits: int, parts: set[str], report: dict[str, Any]) -> None:
    work = Path(tempfile.mkdtemp(prefix="clipfast-sweep-"))
    files = checkpoints(work)
    probe = work / "probe"
    truncations: dict[str, int] = {}
    flips: dict[str, Counter[str]] = {}
    # Truncation of checkpoints: every prefix is a typed error.
    for name, path in files.items() if "truncation" in parts else ():
        data = path.read_bytes()
        count = 0
        for n in prefixes(len(data), stride):
            probe.write_bytes(data[:n])
            try:
                read_state_dict(probe)
            except TYPED:
                count += 1
                continue
            except Exception as err:
                raise Failure(f"{name} cut at {n}: {type(err).__name__}: {err}") from err
            raise Failure(f"{name} cut at {n} of {len(data)} bytes reads as a checkpoint")
        truncations[name] = count
    # Truncation of images: clip's pipeline and clipfast agree on every prefix.
    for name, data in images().items() if "truncation" in parts else ():
        count = 0
        for n in prefixes(len(data), stride, dense=256):
            try:
                differential.check_jpeg(data[:n]) if "jpeg" in name else differential.check_png(data[:n])
            except AssertionError as err:
                raise Failure(f"image {name} cut at {n}: {err}") from err
            count += 1
        truncations[f"image:{name}"] = count
    # Bit flips.
    rng = random.Random(2026)

    def flipped(kind: str, path: Path, offsets: list[int], fix_crc: Any = None) -> None:
        data = path.read_bytes()
        original = read_state_dict(path)
        outcomes: Counter[str] = Counter()
        for at in offsets[::flip_stride]:
            for bit in rng.sample(range(8), bits) if bits < 8 else range(8):
                bad = bytearray(data)
                bad[at] ^= 1 << bit
                if fix_crc is not None:
                    fix_crc(bad)
                probe.write_bytes(bad)
                try:
                    outcomes[read_outcome(probe, original, path)] += 1
                except Failure as err:
                    (work / "failure").write_bytes(bad)
                    raise Failure(
                        f"{kind}, byte {at} bit {bit}: {err} (file kept: {work / 'failure'})"
                    ) from err
        flips[kind] = outcomes

    for name in ("torch.save", "torchscript") if "flips" in parts else ():
        path = files[name]
        data = path.read_bytes()
        flipped(f"{name} zip headers", path, zip_header_bytes(data))
        info, start, end = pickle_span(data)

        def fix(bad: bytearray, info: zipfile.ZipInfo = info, start: int = start, end: int = end) -> None:
            with_crc(bad, info, start, end)

        flipped(f"{name} pickle", path, list(range(start, end)), fix)
        flipped(f"{name} pickle, CRC unchanged", path, list(range(start, end))[::8])
    if "flips" in parts:
        path = files["safetensors"]
        (n,) = struct.unpack("<Q", path.read_bytes()[:8])
        flipped("safetensors header", path, list(range(8 + n)))
    report["truncation_points"] = truncations
    report["bit_flips"] = {k: dict(v) for k, v in flips.items()}
    for k, v in flips.items():
        if k.endswith("CRC unchanged") and set(v) != {"error"}:
            raise Failure(f"{k}: a flipped pickle passed its CRC-32: {dict(v)}")
    report["truncation_total"] = sum(truncations.values())
    report["bit_flip_total"] = sum(sum(v.values()) for v in flips.values())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stride", type=int, default=16, help="every n-th prefix (all near the ends)")
    parser.add_argument("--flip-stride", type=int, default=1, help="flip every n-th header byte")
    parser.add_argument("--bits", type=int, default=1, help="bits flipped (one at a time) per byte")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--parts", default="truncation,flips")
    args = parser.parse_args()
    report: dict[str, Any] = {"stride": args.stride, "flip_stride": args.flip_stride, "bits": args.bits}
    start = time.monotonic()
    try:
        sweep(args.stride, args.flip_stride, args.bits, set(args.parts.split(",")), report)
        report["ok"] = True
    except Failure as err:
        report["ok"] = False
        report["failure"] = str(err)
    report["seconds"] = round(time.monotonic() - start, 1)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
