"""clip-retrieval compatibility check (not part of CI: clip-retrieval pins numpy<2, pyarrow<16 and
open_clip<3, so it needs a virtual environment of its own; ``make check-clip-retrieval`` builds one
with scripts/clip_retrieval_venv.sh and runs this script in it).

1. clip-retrieval's ``clip_inference`` with the real ``clip`` (clip-anytorch) and with ``clip``
   aliased to clipfast (``sys.modules["clip"] = clipfast`` before clip-retrieval is imported), on a
   folder of images and on a WebDataset tar of images + captions: the embeddings must be identical.
2. ``clipfast embed`` on the same inputs (same batch size, run in this environment: numpy 1.x,
   pyarrow < 16): identical embeddings and metadata.
3. clip-retrieval's ``clip_index`` (autofaiss) on clipfast's output folder, unchanged: it must build
   both indices, each holding every row, and find each embedding as its own nearest neighbour.

    python scripts/clip_retrieval_check.py [--images N] [--full]

The model is a ViT-B/32 in OpenAI's TorchScript format with random weights: tiny widths by default,
``--full`` for the full-size one (benches/.cache/ViT-B-32.pt, written by ``make bench``).
Prints a report; exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "images"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), e.get("PYTHONPATH")]))
    e.setdefault("WANDB_MODE", "disabled")
    return e


def make_inputs(tmp: Path, count: int) -> tuple[Path, Path]:
    """A folder of JPEGs and PNGs (no captions: clip-retrieval's files reader pairs captions by a key
    that includes the extension, so it only reads folders of images), and a WebDataset tar of
    JPEGs with .txt captions."""
    import numpy as np
    from PIL import Image

    folder = tmp / "images"
    folder.mkdir()
    photos = [p for p in sorted(PHOTOS.iterdir()) if p.suffix in (".jpg", ".png")]
    rng = np.random.default_rng(5)
    members = []
    for i in range(count):
        if i < len(photos):
            img = Image.open(photos[i]).convert("RGB")
        else:
            w, h = int(rng.integers(200, 700)), int(rng.integers(200, 700))
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        ext = "png" if i % 4 == 3 else "jpg"
        img.save(folder / f"{i:05d}.{ext}", quality=90)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        members += [
            (f"{i:05d}.jpg", buf.getvalue()),
            (f"{i:05d}.txt", f"caption number {i}: a photo".encode()),
        ]
    shard = tmp / "shard-00000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return folder, shard


CLIP_INFERENCE = """
import sys, warnings
warnings.filterwarnings("ignore")
if sys.argv[1] == "clipfast":
    import clipfast
    sys.modules["clip"] = clipfast  # `import clip` in all_clip now gets clipfast
from clip_retrieval.clip_inference.main import main
main(
    input_dataset=sys.argv[2],
    output_folder=sys.argv[3],
    input_format=sys.argv[4],
    clip_model=sys.argv[5],
    batch_size=int(sys.argv[6]),
    num_prepro_workers=1 if sys.argv[4] == "webdataset" else 2,  # WebDataset: one shard, one worker
    enable_text=sys.argv[4] == "webdataset",
    enable_image=True,
    enable_metadata=False,
    use_jit=False,
)
import clip
print("clip module used:", clip.__name__)
"""


def run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, env=env(), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{args[2:]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )


def clip_inference(which: str, source: Path, out: Path, fmt: str, model: Path, batch: int) -> None:
    run(
        [sys.executable, "-c", CLIP_INFERENCE, which, str(source), str(out), fmt, str(model), str(batch)],
        out.parent,
    )


def load_folder(out: Path) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    result: dict[str, Any] = {}
    for sub in ("img_emb", "text_emb"):
        files = sorted((out / sub).glob("*.npy"))
        result[sub] = np.concatenate([np.load(f) for f in files]) if files else None
    tables = [pq.read_table(f).to_pydict() for f in sorted((out / "metadata").glob("*.parquet"))]
    result["metadata"] = {k: [v for t in tables for v in t[k]] for k in tables[0]} if tables else {}
    return result


def check_index(out: Path, tmp: Path) -> list[str]:
    """clip-retrieval's clip_index on clipfast's folder (autofaiss + faiss), as its users run it."""
    import faiss
    import numpy as np

    index_folder = tmp / "index"
    code = (
        "import sys, warnings; warnings.filterwarnings('ignore')\n"
        "from clip_retrieval.clip_index import clip_index\n"
        "clip_index(sys.argv[1], sys.argv[2], max_index_memory_usage='1G', current_memory_available='2G')\n"
    )
    run([sys.executable, "-c", code, str(out), str(index_folder)], tmp)
    problems = []
    data = load_folder(out)
    for kind, key in (("image", "img_emb"), ("text", "text_emb")):
        path = index_folder / f"{kind}.index"
        if not path.is_file():
            problems.append(f"clip_index wrote no {path.name}")
            continue
        index = faiss.read_index(str(path))
        emb = data[key].astype(np.float32)
        if index.ntotal != len(emb):
            problems.append(f"{path.name} holds {index.ntotal} vectors, the folder {len(emb)}")
            continue
        _, found = index.search(emb, 1)
        hits = float(np.mean(found[:, 0] == np.arange(len(emb))))
        if hits < 0.95:
            problems.append(f"{path.name}: only {hits:.0%} of the rows find themselves")
    if not (index_folder / "metadata").is_dir():
        problems.append("clip_index copied no metadata")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--full", action="store_true", help="the full-size ViT-B/32 (benches/.cache)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "python"))
    import clip_retrieval  # noqa: F401  (fails here, clearly, outside the clip-retrieval venv)
    import clipfast
    import numpy as np
    import pyarrow
    import torch
    from clipfast import _testing

    report = [
        f"clip-retrieval check: numpy {np.__version__}, pyarrow {pyarrow.__version__}, "
        f"torch {torch.__version__}, clipfast {clipfast.__version__}"
    ]
    failures = []
    batch = 256  # clip_inference's default: every image in one batch on both sides
    with tempfile.TemporaryDirectory(prefix="clip_retrieval_check_") as name:
        tmp = Path(name)
        if args.full:
            model = ROOT / "benches" / ".cache" / "ViT-B-32.pt"
            if not model.is_file():
                print(f"{model} is missing: run `make bench` (or benches/bench_load.py) first")
                return 2
        else:
            model = _testing.write_openai_archive(tmp / "ViT-B-32-tiny.pt", _testing.tiny("ViT-B/32"))
        folder, shard = make_inputs(tmp, args.images)
        for fmt, source in (("files", folder), ("webdataset", shard)):
            outs = {}
            for which in ("clip", "clipfast"):
                outs[which] = tmp / f"cr_{which}_{fmt}"
                clip_inference(which, source, outs[which], fmt, model, batch)
            outs["embed"] = tmp / f"embed_{fmt}"
            clipfast.embed(source, model=str(model), out=str(outs["embed"]), batch_size=batch, progress=False)
            got = {k: load_folder(v) for k, v in outs.items()}
            for key in ("img_emb", "text_emb"):
                ref = got["clip"][key]
                if ref is None:
                    continue
                for which in ("clipfast", "embed"):
                    mine = got[which][key]
                    same = mine is not None and mine.dtype == ref.dtype and np.array_equal(mine, ref)
                    verdict = "identical"
                    if not same:
                        diff = (
                            None
                            if mine is None
                            else np.abs(mine.astype(np.float32) - ref.astype(np.float32)).max()
                        )
                        verdict = f"DIFFERENT (max |diff| {diff})"
                    label = "clip_inference with clip = clipfast" if which == "clipfast" else "clipfast embed"
                    report.append(
                        f"{fmt:10s} {key:8s} {label:36s} vs clip_inference with clip: "
                        f"{verdict} ({ref.shape[0]} rows, {ref.dtype})"
                    )
                    if not same:
                        failures.append(f"{fmt} {key} {which}")
            for which in ("clipfast", "embed"):
                if got[which]["metadata"] != got["clip"]["metadata"]:
                    failures.append(f"{fmt} metadata {which}")
                    report.append(f"{fmt:10s} metadata differs for {which}")
            if fmt == "webdataset":
                problems = check_index(outs["embed"], tmp)
                report.append(
                    "clip_index (autofaiss) on clipfast embed's folder: "
                    + ("both indices built, every row finds itself" if not problems else "; ".join(problems))
                )
                failures += problems
    report.append("RESULT: " + ("all identical" if not failures else f"FAILED: {failures}"))
    print("\n".join(report))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
