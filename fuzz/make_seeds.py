"""Write the fuzz targets' seed inputs (fuzz/seeds/<target>/): tiny real files made by the tools
that make the real ones (torch.save, torch.jit.save, safetensors, Pillow), plus hand-made
hostile cases. The committed seeds came from it (zip timestamps and torch's record keys differ
between runs, nothing else).

    .venv/bin/python fuzz/make_seeds.py [--only hf_config,hf_index]
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent / "seeds"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
CODE_SEPARATOR = b"\n#code\n"  # rust/fuzzing.rs


ONLY: set[str] = set()  # --only: the targets to write (default all)


def put(target: str, name: str, data: bytes) -> None:
    if ONLY and target not in ONLY:
        return
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def saved(obj: object, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def checkpoints() -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=gen)
    base = w.half()
    files = {
        "state_dict.pt": saved(
            OrderedDict(w=base, b=torch.arange(3, dtype=torch.int64), t=base.t(), v=base[1:, 2:])
        ),
        "parameters.pt": saved({"p": torch.nn.Parameter(w[:2, :2].clone()), "s": torch.tensor(7)}),
        "training.pt": saved({"state_dict": {"module.w": w.bfloat16()}, "epoch": 3, "lr": 0.1}),
        "protocol4.pt": saved({"w": w[:1]}, pickle_protocol=4),
    }
    legacy = io.BytesIO()
    torch.save({"w": w[:1, :1]}, legacy, _use_new_zipfile_serialization=False)
    files["legacy.pt"] = legacy.getvalue()
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)))
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    files["torchscript.pt"] = buf.getvalue()
    from safetensors.torch import save

    files["tensors.safetensors"] = save(
        {"a": w.half(), "b": torch.zeros(2, dtype=torch.uint8)}, metadata={"format": "pt"}
    )
    from attacks import malicious

    with tempfile.TemporaryDirectory() as tmp:
        for name, write in list(malicious.ATTACKS.items())[:4]:
            path = write(Path(tmp) / f"{name}.pt", Path(tmp) / "marker")
            files[f"attack-{name}.pt"] = Path(path).read_bytes()
    return files


def main() -> None:
    if "--only" in sys.argv:
        ONLY.update(sys.argv[sys.argv.index("--only") + 1].split(","))
        for target in ONLY:
            shutil.rmtree(ROOT / target, ignore_errors=True)
    elif ROOT.exists():
        shutil.rmtree(ROOT)
    ckpts = checkpoints()
    for name, data in ckpts.items():
        put("checkpoint", name, data)
    # zip: the archives, one with deflated records, one ZIP64.
    for name, data in ckpts.items():
        if data[:2] == b"PK":
            put("zip", name, data)
    for name, compression, zip64 in (("deflated.zip", zipfile.ZIP_DEFLATED, False), ("zip64.zip", 0, True)):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression) as z:
            with z.open("a/code/__torch__/m.py", "w", force_zip64=zip64) as f:
                f.write(b'class M(Module):\n  __parameters__ = ["w", ]\n' * 4)
            z.writestr("a/data.pkl", b"\x80\x02}q\x00.")
        put("zip", name, buf.getvalue())
    # pickle: every data.pkl, Python's own pickles of every protocol, hostile records.
    for name, data in ckpts.items():
        if data[:2] == b"PK":
            for member, body in members(data).items():
                if member.endswith(".pkl"):
                    put("pickle", f"{name}-{member.split('/')[-1]}", body)
    value = {"a": [1, 2.5, -3, 2**70, None, True], ("t", b"x"): {1, 2}, "s": "é" * 3}
    for protocol in range(6):
        put("pickle", f"python-protocol{protocol}.pkl", pickle.dumps(value, protocol=protocol))
    put("pickle", "reduce-os-system.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")
    put("pickle", "memo-cycle.pkl", b"]q\x00h\x00a.")
    # torchscript: the archive's data.pkl, then its code.
    ts = members(ckpts["torchscript.pt"])
    pkl = next(v for k, v in ts.items() if k.endswith("/data.pkl"))
    code = b"".join(v for k, v in sorted(ts.items()) if "/code/" in k and k.endswith(".py"))
    put("torchscript", "sequential", pkl + CODE_SEPARATOR + code)
    put("torchscript", "no-code", pkl)
    # safetensors: the JSON header.
    st = ckpts["tensors.safetensors"]
    (n,) = struct.unpack("<Q", st[:8])
    put("safetensors", "header.json", st[8 : 8 + n])
    put(
        "safetensors",
        "overlap.json",
        json.dumps(
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            }
        ).encode(),
    )
    # npz: .npy members as numpy writes them (versions, orders, dtypes), and whole archives.
    arrays = {
        "f4.npy": np.arange(6, dtype="<f4").reshape(2, 3),
        "fortran.npy": np.asfortranarray(np.arange(6, dtype="<f2").reshape(3, 2)),
        "scalar.npy": np.array(3, dtype="<i8"),
        "empty.npy": np.zeros((0, 4), dtype="<u1"),
        "bool.npy": np.array([True, False]),
        "big_endian.npy": np.arange(6, dtype=">f4").reshape(2, 3),
        "big_endian_complex.npy": np.array([1 + 2j, -3j], dtype=">c8"),
    }
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr)
        put("npz", name, buf.getvalue())
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arrays["f4.npy"], version=(3, 0))
    put("npz", "version3.npy", buf.getvalue())
    for name, save in (("savez.npz", np.savez), ("savez_compressed.npz", np.savez_compressed)):
        buf = io.BytesIO()
        save(buf, **{k.removesuffix(".npy"): v for k, v in arrays.items()})
        put("checkpoint", name, buf.getvalue())
        put("zip", name, buf.getvalue())
    # configs: transformers' own CLIP configurations, a shard index, open_clip's model configs.
    from transformers import CLIPConfig, CLIPImageProcessor

    put("hf_config", "clip-config.json", CLIPConfig().to_json_string().encode())
    put("hf_config", "preprocessor.json", CLIPImageProcessor().to_json_string().encode())
    index = {"metadata": {"total_size": 8}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}
    put("hf_index", "index.json", json.dumps(index).encode())
    put("hf_index", "escape.json", json.dumps({"weight_map": {"a": "../x.safetensors"}}).encode())
    import open_clip

    configs = Path(open_clip.__file__).parent / "model_configs"
    for name in ("ViT-B-32", "ViT-H-14", "RN50", "ViT-bigG-14", "coca_ViT-B-32"):
        cfg = json.loads((configs / f"{name}.json").read_text())
        doc = {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
        put("openclip_config", f"{name}.json", json.dumps(doc).encode())
    # PNG: the kinds Rust decodes, and some it leaves to Pillow.
    rng = np.random.default_rng(0)
    for mode, size in (
        ("L", (7, 5)),
        ("LA", (5, 9)),
        ("RGB", (9, 4)),
        ("RGBA", (6, 6)),
        ("P", (4, 4)),
        ("I;16", (3, 3)),
    ):
        arr = rng.integers(0, 255, size=(size[1], size[0], len(mode) if mode in ("LA", "RGB", "RGBA") else 1))
        img = Image.fromarray(
            arr.astype(np.uint8).squeeze(-1) if arr.shape[-1] == 1 else arr.astype(np.uint8)
        )
        img = img.convert(mode) if img.mode != mode else img
        buf = io.BytesIO()
        img.save(buf, "PNG")
        put("png", f"{mode.replace(';', '')}.png", buf.getvalue())
    rgb = Image.fromarray(rng.integers(0, 255, size=(5, 6, 3)).astype(np.uint8))
    for name, params in (
        ("icc.png", {"icc_profile": b"\0" * 128}),
        ("trns.png", {"transparency": (1, 2, 3)}),
        ("text.png", {"pnginfo": _text_chunks()}),
    ):
        buf = io.BytesIO()
        rgb.save(buf, "PNG", **params)
        put("png", name, buf.getvalue())
    # JPEG: grey, the three subsamplings, progressive, restart markers, CMYK.
    photo = Image.fromarray(rng.integers(0, 255, size=(19, 27, 3)).astype(np.uint8))
    for name, img, params in (
        ("gray.jpg", photo.convert("L"), {}),
        ("420.jpg", photo, {"subsampling": 2}),
        ("422.jpg", photo, {"subsampling": 1}),
        ("444.jpg", photo, {"subsampling": 0}),
        ("progressive.jpg", photo, {"progressive": True}),
        ("restart.jpg", photo, {"restart_marker_blocks": 1}),
        ("cmyk.jpg", photo.convert("CMYK"), {}),
        ("large.jpg", photo.resize((80, 70)), {"quality": 30}),
    ):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=params.pop("quality", 80), **params)
        put("jpeg", name, buf.getvalue())
    # resize: mode byte, width, height (u16 LE), n, then a few pixel bytes.
    for mode in range(8):
        for w, h, n in ((5, 7, 3), (300, 40, 32), (1, 200, 9), (640, 427, 24)):
            put(
                "resize",
                f"m{mode}-{w}x{h}-{n}",
                bytes([mode]) + struct.pack("<HHB", w, h, n) + bytes(range(0, 256, 7)),
            )
    # tokenizer: captions, markup, scripts, the special tokens.
    for i, text in enumerate(
        (
            "a photo of a cat",
            "A Diagram, with 3 ARROWS & <b>html</b> &amp; entities!!",
            "naïve café – “quoted” ‘words’ ’s",
            "日本語のテキスト 한국어 текст עברית العربية 😀👍🏽",
            "<|startoftext|>hello<|endoftext|> it's we'll I'd you're they've don't",
            "\t tabs \n newlines \x0c form feeds   spaces",
            "x" * 120 + " " + "supercalifragilisticexpialidocious" * 3,
        )
    ):
        put("tokenizer", f"text{i}", text.encode())
    # http: a partial record line ('|' for newlines), the kept length, then responses.
    meta = b'clipfast-partial 1|url http://127.0.0.1/f|total 100|etag "v1"\n'
    put(
        "http",
        "fresh-200",
        b"\n"
        + struct.pack("<HH", 0, 100)
        + b'Content-Length: 10\nETag: "v1"\n\n'
        + struct.pack("<HHH", 4, 6, 0),
    )
    put(
        "http",
        "resume-206",
        meta
        + struct.pack("<HH", 40, 106)
        + b'Content-Range: bytes 40-99/100\nETag: "v1"\n\n'
        + struct.pack("<HH", 60, 0),
    )
    put("http", "complete-416", meta + struct.pack("<HH", 100, 316) + b"\n")
    put(
        "http",
        "retry-503",
        b"\n" + struct.pack("<HH", 0, 403) + b"Retry-After: 2\n\n" + struct.pack("<H", 100) + b"\n",
    )
    put(
        "http",
        "changed",
        meta + struct.pack("<HH", 40, 106) + b'Content-Range: bytes 40-99/100\nETag: "v2"\n\n',
    )
    put(
        "http",
        "too-long",
        b"\n" + struct.pack("<HH", 0, 100) + b"Content-Length: 5\n\n" + struct.pack("<HH", 9, 0),
    )


def _text_chunks() -> object:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "tiny")
    info.add_itxt("title", "ü", lang="de")
    return info


if __name__ == "__main__":
    main()
