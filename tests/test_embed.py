"""``clipfast embed``: every input kind gives the embeddings clip users compute by hand, row for
row; the output is clip-retrieval's layout; a killed run resumes; bad files are reported, not fatal;
a folder of another job is refused."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from clipfast import _testing, cli
from clipfast.embedding import sources
from clipfast.embedding.output import MANIFEST_NAME
from PIL import Image

PHOTOS = Path(__file__).parent / "images"
CAPTIONS = [
    "a photo of an astronaut",
    "a cat on a sofa",
    "Coffee &amp; cake — café",
    "a rocket launch",
    "grey gradient",
    "a red square with a transparent corner",
    "a palette image",
    "a tall thin picture",
    "an extremely long caption " * 40,  # longer than 77 tokens: truncated, as clip-retrieval does
    "😀 emoji caption",
]


def _synthetic(kind: int) -> Image.Image:
    rng = np.random.default_rng(kind)
    if kind == 0:
        return Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (90, 1)), "L")
    if kind == 1:
        arr = rng.integers(0, 255, (120, 150, 4), dtype=np.uint8)
        arr[:40, :40, 3] = 0
        return Image.fromarray(arr, "RGBA")
    if kind == 2:
        return Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).convert("P")
    if kind == 3:
        return Image.fromarray(rng.integers(0, 255, (400, 60, 3), dtype=np.uint8))
    if kind == 4:
        return Image.fromarray(rng.integers(0, 255, (230, 310, 3), dtype=np.uint8))
    return Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def image_files() -> list[tuple[str, bytes]]:
    """(file name, bytes) of ten images of different sizes, modes and formats."""
    files = [(p.name, p.read_bytes()) for p in sorted(PHOTOS.iterdir()) if p.suffix in (".jpg", ".png")]
    kinds = [
        ("png", "PNG"),
        ("png", "PNG"),
        ("gif", "GIF"),
        ("jpg", "JPEG"),
        ("webp", "WEBP"),
        ("bmp", "BMP"),
    ]
    for i, (ext, fmt) in enumerate(kinds):
        files.append((f"synthetic_{i}.{ext}", _encoded(_synthetic(i), fmt)))
    return files


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ViT in OpenAI's TorchScript format (64 px, 2 + 2 layers), so the tests run fast; the
    preprocessing is the same code at any size."""
    spec = dataclasses.replace(_testing.tiny("ViT-B/16"), image_resolution=64, vision_layers=2)
    return _testing.write_openai_archive(tmp_path_factory.mktemp("embed-model") / "small.pt", spec)


@pytest.fixture(scope="module")
def reference(model_path: Path) -> Any:
    model, preprocess = clipfast.load(str(model_path), device="cpu")
    return model, preprocess


def write_folder(root: Path, captions: bool = True) -> list[Path]:
    """The images in nested folders (sorted order = the names below), with captions beside them."""
    paths = []
    for i, (name, data) in enumerate(image_files()):
        p = root / ("sub" if i % 3 == 0 else "") / f"{i:02d}_{name}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if captions:
            p.with_suffix(".txt").write_text(CAPTIONS[i], encoding="utf-8")
        paths.append(p)
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def reference_images(reference: Any, paths: Sequence[Any], batches: Sequence[int]) -> torch.Tensor:
    """``model.encode_image(preprocess(Image.open(p)))`` in the given batch sizes (the pipeline's),
    so that the same matrix products give the same bits."""
    model, preprocess = reference
    out, start = [], 0
    with torch.no_grad():
        for n in batches:
            x = torch.stack([preprocess(Image.open(p)) for p in paths[start : start + n]])
            out.append(model.encode_image(x))
            start += n
    return torch.cat(out)


def reference_texts(reference: Any, captions: Sequence[str], batches: Sequence[int]) -> torch.Tensor:
    model, _ = reference
    out, start = [], 0
    with torch.no_grad():
        for n in batches:
            out.append(model.encode_text(clipfast.tokenize(captions[start : start + n], truncate=True)))
            start += n
    return torch.cat(out)


def batches_of(total: int, shard_size: int, batch_size: int) -> list[int]:
    sizes = []
    for start in range(0, total, shard_size):
        n = min(shard_size, total - start)
        sizes += [min(batch_size, n - b) for b in range(0, n, batch_size)]
    return sizes


def read_output(out: Path) -> dict[str, Any]:
    """The folder as clip-retrieval's readers see it: files sorted by name, concatenated."""
    npys = {f: sorted((out / f).glob("*.npy")) for f in ("img_emb", "text_emb")}
    metas = sorted((out / "metadata").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(m) for m in metas]) if metas else None
    result: dict[str, Any] = {"metadata": table.to_pydict() if table is not None else {}}
    for f, files in npys.items():
        result[f] = np.concatenate([np.load(p) for p in files]) if files else None
        result[f + "_files"] = files
    result["metadata_files"] = metas
    errors = out / "errors.jsonl"
    result["errors"] = [json.loads(x) for x in errors.read_text().splitlines()] if errors.exists() else []
    return result


def embed(inputs: Any, model: Path, out: Path, **kw: Any) -> Any:
    kw.setdefault("progress", False)
    return clipfast.embed(inputs, model=str(model), out=str(out), **kw)


# --- every input kind, row for row ------------------------------------------------------------


def test_folder_images_and_captions_equal_the_reference(
    tmp_path: Path, model_path: Path, reference: Any
) -> None:
    paths = write_folder(tmp_path / "data")
    summary = embed(
        tmp_path / "data",
        model_path,
        tmp_path / "out",
        shard_size=4,
        batch_size=3,
        dtype="fp32",
        normalize=False,
    )
    assert summary.images and summary.text and summary.errors == 0 and summary.rows == len(paths)
    got = read_output(tmp_path / "out")
    assert got["metadata"]["image_path"] == [str(p) for p in paths]
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in paths]
    assert got["metadata"]["caption"] == captions
    sizes = batches_of(len(paths), 4, 3)
    assert torch.equal(torch.from_numpy(got["img_emb"]), reference_images(reference, paths, sizes))
    assert torch.equal(torch.from_numpy(got["text_emb"]), reference_texts(reference, captions, sizes))
    # Layout: fixed-width names, one file of each per shard, no temporary files left.
    assert [p.name for p in got["img_emb_files"]] == [f"img_emb_{k:05d}.npy" for k in range(3)]
    assert [p.name for p in got["metadata_files"]] == [f"metadata_{k:05d}.parquet" for k in range(3)]
    assert sorted(p.name for p in (tmp_path / "out" / "stats").iterdir()) == [
        f"{k:05d}.json" for k in range(3)
    ]
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]


def test_defaults_are_clip_retrievals_normalised_fp16(
    tmp_path: Path, model_path: Path, reference: Any
) -> None:
    paths = write_folder(tmp_path / "data", captions=False)
    summary = embed(tmp_path / "data", model_path, tmp_path / "out", batch_size=32)
    assert summary.images and not summary.text and summary.dtype == "float16"
    got = read_output(tmp_path / "out")
    assert got["img_emb"].dtype == np.float16 and got["text_emb"] is None
    assert not list((tmp_path / "out" / "text_emb").iterdir())
    ref = reference_images(reference, paths, [len(paths)])
    ref = (ref / ref.norm(dim=-1, keepdim=True)).to(torch.float16)  # clip-retrieval's mapper
    assert torch.equal(torch.from_numpy(got["img_emb"]), ref)
    assert list(got["metadata"]) == ["image_path"]


def test_path_list_glob_csv_parquet(tmp_path: Path, model_path: Path, reference: Any) -> None:
    paths = write_folder(tmp_path / "data", captions=False)
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    # A text file of paths, relative to its own folder.
    (tmp_path / "list.txt").write_text("\n".join(rel) + "\n\n")
    # A CSV of image_path, caption; a parquet of the same.
    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        f.write("image_path,caption\n")
        for r, c in zip(rel, CAPTIONS):
            f.write(f'{r},"{c}"\n')
    pq.write_table(pa.table({"image_path": rel, "caption": CAPTIONS}), tmp_path / "pairs.parquet")
    sizes = batches_of(len(paths), 100, 4)
    want = reference_images(reference, paths, sizes)
    cases: dict[str, Any] = {
        "list": tmp_path / "list.txt",
        "glob": str(tmp_path / "data" / "**" / "*.*"),
        "csv": tmp_path / "pairs.csv",
        "parquet": tmp_path / "pairs.parquet",
    }
    for name, source in cases.items():
        out = tmp_path / f"out_{name}"
        summary = embed(source, model_path, out, batch_size=4, dtype="fp32", normalize=False, shard_size=100)
        got = read_output(out)
        if name == "glob":  # a glob sorts the matched paths as text: compare in that order
            order = sorted(range(len(paths)), key=lambda i: str(paths[i]))
            assert got["metadata"]["image_path"] == [str(paths[i]) for i in order]
            assert torch.equal(
                torch.from_numpy(got["img_emb"]),
                reference_images(reference, [paths[i] for i in order], sizes),
            )
            continue
        assert got["metadata"]["image_path"] == rel, name
        assert torch.equal(torch.from_numpy(got["img_emb"]), want), name
        if name in ("csv", "parquet"):
            assert summary.text and got["metadata"]["caption"] == CAPTIONS
            assert torch.equal(torch.from_numpy(got["text_emb"]), reference_texts(reference, CAPTIONS, sizes))


def test_captions_text_and_jsonl_are_text_only_jobs(tmp_path: Path, model_path: Path, reference: Any) -> None:
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS[:6]) + "\n\n" + "\n".join(CAPTIONS[6:]) + "\n")
    lines = [
        json.dumps(c) if i % 2 else json.dumps({"caption": c, "id": f"k{i}"}) for i, c in enumerate(CAPTIONS)
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    for name in ("captions.txt", "captions.jsonl"):
        out = tmp_path / f"out_{name}"
        summary = embed(tmp_path / name, model_path, out, batch_size=4, dtype="fp32", normalize=False)
        assert not summary.images and summary.text
        got = read_output(out)
        assert list(got["metadata"]) == ["caption"] and got["metadata"]["caption"] == CAPTIONS
        assert got["img_emb"] is None and not list((out / "img_emb").iterdir())
        want = reference_texts(reference, CAPTIONS, batches_of(len(CAPTIONS), 10_000, 4))
        assert torch.equal(torch.from_numpy(got["text_emb"]), want)


def _tar(
    path: Path, members: Sequence[tuple[str, bytes]], extra: Callable[[tarfile.TarFile], None] | None = None
) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        if extra is not None:
            extra(tar)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_tar_shards(tmp_path: Path, model_path: Path, reference: Any) -> None:
    files = image_files()
    members: list[tuple[str, bytes]] = []
    keys = []
    for i, (name, data) in enumerate(files[:6]):
        ext = name.rsplit(".", 1)[1]
        key = f"part.v1/{i:04d}" if i % 2 else f"{i:04d}"  # a dot in a folder is part of the key
        keys.append(key)
        upper = ext.upper() if i == 3 else ext  # extensions are lower-cased
        members += [(f"{key}.{upper}", data), (f"{key}.txt", CAPTIONS[i].encode()), (f"{key}.json", b"{}")]

    def dirs(tar: tarfile.TarFile) -> None:
        d = tarfile.TarInfo("part.v1")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        info = tarfile.TarInfo("__index__")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))

    _tar(tmp_path / "shard-0000.tar", members, dirs)
    members2 = []
    for i, (name, data) in enumerate(files[6:9], start=6):
        key = f"s2_{i}"
        keys.append(key)
        members2 += [(f"{key}.txt", CAPTIONS[i].encode()), (f"{key}.{name.rsplit('.', 1)[1]}", data)]
    _tar(tmp_path / "shard-0001.tar", members2)
    out = tmp_path / "out"
    summary = embed(
        str(tmp_path / "shard-*.tar"), model_path, out, batch_size=4, dtype="fp32", normalize=False
    )
    assert summary.errors == 0, read_output(out)["errors"]
    got = read_output(out)
    assert got["metadata"]["image_path"] == keys  # the WebDataset key, as clip-retrieval writes it
    assert got["metadata"]["caption"] == CAPTIONS[:9]
    decoded = [io.BytesIO(data) for _, data in files[:9]]
    sizes = batches_of(9, 10_000, 4)
    assert torch.equal(torch.from_numpy(got["img_emb"]), reference_images(reference, decoded, sizes))
    assert torch.equal(torch.from_numpy(got["text_emb"]), reference_texts(reference, CAPTIONS[:9], sizes))


def test_webdataset_key_rules(tmp_path: Path) -> None:
    members = [
        ("a/b.c/d.e.JPG", b"1"),  # key a/b.c/d, extension e.jpg (not an image key)
        ("a/b.c/d.e.txt", b"cap"),  # extension e.txt: not the caption either
        ("x.jpg", b"2"),
        ("y.png", b"3"),
        ("x.txt", b"later x"),  # not adjacent to x.jpg: another sample, as WebDataset groups them
        ("noext", b"4"),  # no extension: skipped
        (".hidden.jpg", b"5"),  # nothing before the first dot: skipped
        ("z.jpg", b"6"),
        ("z.JPG", b"7"),  # the same extension twice in one sample
    ]
    _tar(tmp_path / "t.tar", members)
    samples, _ = sources.list_samples(tmp_path / "t.tar")
    assert [s.id for s in samples] == ["a/b.c/d", "x", "y", "x", "z"]
    assert samples[0].image is None and samples[0].caption_source is None
    assert samples[1].image is not None and samples[1].caption_source is None
    assert samples[3].image is None and samples[3].caption_source is not None
    assert samples[4].error is not None and "duplicate" in samples[4].error


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [False, True], ids=["in-turns", "ahead"])
def test_broken_files_go_to_the_errors_file(
    tmp_path: Path, model_path: Path, reference: Any, overlap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both ways of feeding the model: in turns with it (the CPU's default) and a reader thread ahead
    # of it (a GPU's, or where torch leaves cores free).
    from clipfast.embedding import pipeline

    monkeypatch.setattr(pipeline, "overlaps", lambda encoder, workers: overlap)
    paths = write_folder(tmp_path / "data", captions=False)
    good = paths[:5]
    jpeg = (PHOTOS / "coffee.jpg").read_bytes()
    png = (PHOTOS / "chelsea.png").read_bytes()
    bad = {
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"this is not an image at all",
        "empty.png": b"",
    }
    for name, data in bad.items():
        (tmp_path / "data" / name).write_bytes(data)
    listed = (
        [str(p) for p in good[:2]]
        + [str(tmp_path / "data" / n) for n in bad]
        + [str(tmp_path / "missing.jpg")]
        + [str(p) for p in good[2:]]
    )
    (tmp_path / "list.txt").write_text("\n".join(listed))
    summary = embed(
        tmp_path / "list.txt",
        model_path,
        tmp_path / "out",
        batch_size=4,
        dtype="fp32",
        normalize=False,
        shard_size=4,
    )
    got = read_output(tmp_path / "out")
    assert summary.rows == len(good) and summary.errors == len(bad) + 1
    failed = {Path(e["id"]).name: e["error"] for e in got["errors"]}
    assert set(failed) == {*bad, "missing.jpg"}
    assert all(failed.values())
    assert "No such file" in failed["missing.jpg"] or "FileNotFoundError" in failed["missing.jpg"]
    assert got["metadata"]["image_path"] == [str(p) for p in good]
    # The good rows are still clip's: shard 0 = [good0, good1, bad, bad], shard 1 = [bad, bad, missing,
    # good2], shard 2 = [good3, good4]: model batches of 2, 1, 2.
    assert torch.equal(torch.from_numpy(got["img_emb"]), reference_images(reference, good, [2, 1, 2]))
    # A shard whose every sample failed writes no embedding file (autofaiss skips empty .npy files,
    # which would shift its pairing of .npy and .parquet files), only its stats and errors.
    shard1_errors = json.loads((tmp_path / "out" / "stats" / "00001.json").read_text())
    assert shard1_errors["sample_count"] == 1 and shard1_errors["error_count"] == 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("overlap", [False, True], ids=["in-turns", "ahead"])
def test_a_fifo_named_like_an_image_is_an_error_not_a_hang(
    tmp_path: Path, model_path: Path, reference: Any, overlap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO in a folder (os.walk lists it) or named in a path list: opening it waited for a
    writer, forever. It is reported as an error row; the other rows are still clip's."""
    from clipfast.embedding import pipeline

    monkeypatch.setattr(pipeline, "overlaps", lambda encoder, workers: overlap)
    paths = write_folder(tmp_path / "data", captions=False)
    for p in paths[3:]:
        p.unlink()
    paths = paths[:3]
    fifo = tmp_path / "data" / "zz_pipe.jpg"
    os.mkfifo(fifo)
    # Without the fix the job blocks in open(); after a while this thread opens the FIFO for
    # writing (and closes it), so that the test fails instead of hanging.
    done = threading.Event()
    unblocked: list[bool] = []

    def unblock() -> None:
        if done.wait(30):
            return
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                unblocked.append(True)
            except OSError:  # no reader waiting yet
                pass
            time.sleep(0.05)

    helper = threading.Thread(target=unblock, daemon=True)
    helper.start()
    try:
        (tmp_path / "list.txt").write_text("\n".join([str(paths[0]), str(fifo), *map(str, paths[1:])]))
        listed = embed(tmp_path / "list.txt", model_path, tmp_path / "out-list", batch_size=2, dtype="fp32")
        folder = embed(tmp_path / "data", model_path, tmp_path / "out-folder", batch_size=2, dtype="fp32")
    finally:
        done.set()
        helper.join()
    assert not unblocked, "the job blocked on the FIFO"
    for summary, out in ((listed, tmp_path / "out-list"), (folder, tmp_path / "out-folder")):
        got = read_output(out)
        assert summary.rows == len(paths) and summary.errors == 1
        assert [e["id"] for e in got["errors"]] == [str(fifo)]
        assert "not a regular file" in got["errors"][0]["error"]
        assert got["metadata"]["image_path"] == [str(p) for p in paths]
    expected = reference_images(reference, paths, [1, 2])
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.equal(torch.from_numpy(read_output(tmp_path / "out-list")["img_emb"]), expected)


def test_reader_beside_the_model_only_where_cores_are_free(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipfast.embedding import pipeline

    class Encoder:
        on_gpu = False

    monkeypatch.setattr(pipeline, "_cores", lambda: 8)
    for torch_threads, workers, beside in [(8, 8, False), (8, 1, False), (4, 4, True), (4, 5, False)]:
        monkeypatch.setattr(torch, "get_num_threads", lambda n=torch_threads: n)
        assert pipeline.overlaps(Encoder(), workers) is beside  # type: ignore[arg-type]
    Encoder.on_gpu = True
    assert pipeline.overlaps(Encoder(), 8) is True  # type: ignore[arg-type]


@pytest.mark.parametrize("overlap", [False, True], ids=["in-turns", "ahead"])
def test_a_failing_reader_stops_the_job(
    tmp_path: Path, model_path: Path, overlap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error that is not a sample's (here: the preprocessing itself) ends the job with that error,
    # and no reader thread is left behind.
    from clipfast.embedding import pipeline

    write_folder(tmp_path / "data", captions=False)
    monkeypatch.setattr(pipeline, "overlaps", lambda encoder, workers: overlap)
    calls = []
    real = pipeline.prepare_batch

    def prepare_batch(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("no room for the batch")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "prepare_batch", prepare_batch)
    with pytest.raises(MemoryError, match="no room"):
        embed(tmp_path / "data", model_path, tmp_path / "out", batch_size=2, shard_size=2, progress=False)
    assert not [t for t in threading.enumerate() if t.name == "clipfast-embed-reader"]
    assert (tmp_path / "out" / "stats" / "00000.json").exists()  # the shard done before is kept


def test_input_errors_are_typed(tmp_path: Path, model_path: Path) -> None:
    with pytest.raises(clipfast.InputError, match="no such file"):
        embed(tmp_path / "nothing", model_path, tmp_path / "out")
    with pytest.raises(clipfast.InputError, match="no file matches"):
        embed(str(tmp_path / "*.jpg"), model_path, tmp_path / "out")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(clipfast.InputError, match="image_path"):
        embed(tmp_path / "t.csv", model_path, tmp_path / "out")
    (tmp_path / "s.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(clipfast.InputError, match="compressed"):
        embed(tmp_path / "s.tar.gz", model_path, tmp_path / "out")
    with pytest.raises(ValueError, match="dtype"):
        embed(tmp_path, model_path, tmp_path / "out", dtype="int8")
    assert not (tmp_path / "out").exists()


# --- resumption and refusal ---------------------------------------------------------------------


def _child(code: str, *, env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    package = str(Path(clipfast.__file__).parent.parent)
    script = f"import sys, os, time, signal\nsys.path.insert(0, {package!r})\n" + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, env={**os.environ, **(env_extra or {})}
    )


def _files(out: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(out).as_posix(): (p.stat().st_ino, p.read_bytes())
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.parent.name in ("img_emb", "text_emb", "metadata", "errors")
    }


def _shard_of(name: str) -> str:
    match = re.search(r"(\d+)\.\w+$", name)
    assert match is not None, name
    return match.group(1)


def test_sigkill_mid_run_then_resume(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_folder(tmp_path / "data")
    (tmp_path / "data" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    args = dict(shard_size=2, batch_size=2, progress=False)
    whole = tmp_path / "whole"
    embed(tmp_path / "data", model_path, whole, **args)
    out = tmp_path / "out"
    # The job in a child process, slowed down (each model batch sleeps), killed with SIGKILL once
    # three shards are on disk: while shard 3 or 4 is in progress.
    child = _child(
        f"""
        import clipfast
        from clipfast.embedding import pipeline
        slow = pipeline._through_model
        def through_model(*a, **k):
            time.sleep(0.3)
            return slow(*a, **k)
        pipeline._through_model = through_model
        clipfast.embed({str(tmp_path / "data")!r}, model={str(model_path)!r}, out={str(out)!r}, **{args!r})
        """
    )
    deadline = time.monotonic() + 120
    while not (out / "stats" / "00002.json").exists():
        assert child.poll() is None, "the child ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    done_before = {p.name for p in (out / "stats").iterdir() if p.suffix == ".json"}
    assert 3 <= len(done_before) < 6
    kept = _files(out)
    # The rerun redoes only the unfinished shards and leaves the finished ones' files alone.
    summary = embed(tmp_path / "data", model_path, out, **args)
    assert summary.shards_skipped == len(done_before)
    assert summary.shards_written == 6 - len(done_before)
    assert summary.processed == 11 - 2 * len(done_before)
    after = _files(out)
    for name, (inode, data) in kept.items():
        if _shard_of(name) + ".json" in done_before:
            assert after[name] == (inode, data), name  # not rewritten
    # Same rows as an uninterrupted run, file for file.
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in _files(whole).items()}
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    # A rerun of a finished folder does no model work at all (the model is never loaded).
    from clipfast import embedding

    def no_model(*a: Any, **k: Any) -> None:
        raise AssertionError("the model was loaded for a finished folder")

    monkeypatch.setattr(embedding, "Encoder", no_model)
    summary = embed(tmp_path / "data", model_path, out, **args)
    assert summary.shards_written == 0 and summary.processed == 0 and summary.rows == 10


def test_killed_between_files_of_a_shard(tmp_path: Path, model_path: Path) -> None:
    write_folder(tmp_path / "data", captions=False)
    out = tmp_path / "out"
    # Killed right after shard 1's embeddings were renamed into place, before its stats file (the
    # mark of a finished shard): the rerun must redo shard 1 rather than trust it.
    child = _child(
        f"""
        import clipfast, os
        from clipfast.embedding import output
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith("metadata_00001.parquet"):
                os.kill(os.getpid(), signal.SIGKILL)
        output.os.replace = replace
        clipfast.embed({str(tmp_path / "data")!r}, model={str(model_path)!r}, out={str(out)!r},
                       shard_size=4, batch_size=4, progress=False)
        """
    )
    assert child.wait(timeout=120) == -signal.SIGKILL
    assert (out / "img_emb" / "img_emb_00001.npy").exists() and not (out / "stats" / "00001.json").exists()
    summary = embed(tmp_path / "data", model_path, out, shard_size=4, batch_size=4)
    assert summary.shards_skipped == 1 and summary.shards_written == 2
    whole = tmp_path / "whole"
    embed(tmp_path / "data", model_path, whole, shard_size=4, batch_size=4)
    assert {k: v[1] for k, v in _files(out).items()} == {k: v[1] for k, v in _files(whole).items()}


def test_a_folder_of_another_job_is_refused(tmp_path: Path, model_path: Path) -> None:
    write_folder(tmp_path / "data", captions=False)
    out = tmp_path / "out"
    embed(tmp_path / "data", model_path, out, shard_size=4)
    manifest = (out / MANIFEST_NAME).read_bytes()
    before = _files(out)
    refusals = {
        "normalize": dict(normalize=False),
        "dtype": dict(dtype="fp32"),
        "shard_size": dict(shard_size=5),
        "decode": dict(decode="fast"),
    }
    for what, kw in refusals.items():
        with pytest.raises(clipfast.OutputFolderError, match=what):
            embed(tmp_path / "data", model_path, out, **{"shard_size": 4, **kw})
    other = tmp_path / "other.pt"  # another file: another SHA-256 (refused before any load)
    other.write_bytes(model_path.read_bytes() + b"\0")
    with pytest.raises(clipfast.OutputFolderError, match="model"):
        embed(tmp_path / "data", other, out, shard_size=4)
    (tmp_path / "data" / "new.png").write_bytes((PHOTOS / "chelsea.png").read_bytes())
    with pytest.raises(clipfast.OutputFolderError, match="input"):
        embed(tmp_path / "data", model_path, out, shard_size=4)
    assert (out / MANIFEST_NAME).read_bytes() == manifest and _files(out) == before
    # A folder that is not empty and not clipfast's is not written into either.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(clipfast.OutputFolderError, match="not empty"):
        embed(tmp_path / "data", model_path, other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert issubclass(clipfast.OutputFolderError, FileExistsError)


def test_one_run_per_folder_at_a_time(tmp_path: Path, model_path: Path) -> None:
    from clipfast.embedding.output import LOCK_NAME

    write_folder(tmp_path / "data", captions=False)
    out = tmp_path / "out"
    out.mkdir()
    holder = _child(
        f"""
        import fcntl
        fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        open({str(tmp_path / "held")!r}, "w").close()
        time.sleep(60)
        """
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "held").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(clipfast.OutputFolderError, match="another clipfast embed run"):
            embed(tmp_path / "data", model_path, out)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    embed(tmp_path / "data", model_path, out)  # free again


# --- the iterator, the CLI, the extras ------------------------------------------------------------


def test_embed_batches_yields_the_same_rows(tmp_path: Path, model_path: Path, reference: Any) -> None:
    paths = write_folder(tmp_path / "data")
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    errors: list[dict[str, str]] = []
    batches = list(
        clipfast.embed_batches(
            tmp_path / "data",
            model=str(model_path),
            batch_size=4,
            dtype="fp32",
            normalize=False,
            on_error=errors.append,
        )
    )
    ids = [i for b in batches for i in b[0]]
    assert ids == [
        str(p) for p in sorted([*paths], key=lambda p: p.relative_to(tmp_path / "data").as_posix())
    ]
    assert [Path(e["id"]).name for e in errors] == ["broken.png"]
    emb = np.concatenate([b[1] for b in batches])
    sizes = [len(b[0]) for b in batches]
    assert torch.equal(torch.from_numpy(emb), reference_images(reference, [Path(i) for i in ids], sizes))
    # The captions instead of the images.
    text = list(
        clipfast.embed_batches(
            tmp_path / "data",
            model=str(model_path),
            batch_size=4,
            modality="text",
            dtype="fp32",
            normalize=False,
            on_error=errors.append,
        )
    )
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in paths]
    assert [i for b in text for i in b[0]] == ids
    want = reference_texts(reference, captions, [len(b[0]) for b in text])
    assert torch.equal(torch.from_numpy(np.concatenate([b[1] for b in text])), want)


def test_cli_embed(tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "data")
    out = tmp_path / "out"
    status = cli.main(
        [
            "embed",
            str(tmp_path / "data"),
            "--model",
            str(model_path),
            "--out",
            str(out),
            "--batch-size",
            "5",
            "--no-text",
            "--json",
            "--quiet",
        ]
    )
    payload = json.loads(capsys.readouterr().out)
    assert status == 0 and payload["rows"] == 10 and payload["images"] and not payload["text"]
    assert payload["model_sha256"] and payload["model_sha256"] == clipfast.cache.hash_file(model_path)
    assert json.loads((out / "summary.json").read_text())["rows"] == 10
    # Human summary; then a refused rerun is exit 2 with the reason.
    status = cli.main(
        ["embed", str(tmp_path / "data"), "--model", str(model_path), "--out", str(out), "--no-text"]
    )
    assert status == 0 and "10 embedded" in capsys.readouterr().out
    status = cli.main(["embed", str(tmp_path / "data"), "--model", str(model_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "other settings" in err and "settings.text" in err
    status = cli.main(["embed", str(tmp_path / "none"), "--model", str(model_path), "--out", str(out)])
    assert status == 2 and "no such file" in capsys.readouterr().err
    # `--ray [ADDRESS]`: a token after it that is no Ray address is an INPUT, not its value.
    parse = cli._parser().parse_args
    args = parse(cli._lone_ray_flags(["embed", "--ray", "data/", "--model", "m", "--out", "o"]))
    assert args.ray == "" and args.inputs == ["data/"]
    args = parse(
        cli._lone_ray_flags(["embed", "data/", "--ray", "10.0.0.1:6379", "--model", "m", "--out", "o"])
    )
    assert args.ray == "10.0.0.1:6379" and args.inputs == ["data/"]


def test_cli_embed_reports_a_damaged_official_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cached official file that fails its checksum is the CLI's error line and exit 2 (as for
    ``convert`` and ``download``), not a traceback."""
    write_folder(tmp_path / "data", captions=False)
    root = tmp_path / "root"
    root.mkdir()
    (root / "ViT-B-32.pt").write_bytes(b"junk")
    monkeypatch.setenv("CLIPFAST_OFFLINE", "1")
    argv = [
        "embed",
        str(tmp_path / "data"),
        "--model",
        "ViT-B/32",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "o"),
    ]
    status = cli.main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("clipfast: error:") and "SHA-256 does not match" in err


def test_parquet_needs_pyarrow_and_says_so(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_folder(tmp_path / "data", captions=False)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        clipfast.MissingDependencyError, match=re.escape("pip install 'clipfast[embed]'")
    ) as info:
        embed(tmp_path / "data", model_path, tmp_path / "out")
    assert info.value.name == "pyarrow"
    assert not (tmp_path / "out").exists()
    # The iterator writes no parquet: it works without pyarrow.
    batches = list(clipfast.embed_batches(tmp_path / "data", model=str(model_path), batch_size=20))
    assert sum(len(b[0]) for b in batches) == 10


def test_ray_without_ray_says_so_first(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ray=True`` without Ray Data: MissingDependencyError before any work (listing the inputs,
    hashing the model, which for an ``hf-hub:`` name downloads it) and nothing written."""
    from clipfast import embedding

    write_folder(tmp_path / "data", captions=False)
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work done before Ray was found missing")

    monkeypatch.setattr(embedding, "model_identity", no_work)
    monkeypatch.setattr(embedding, "make_plan", no_work)
    with pytest.raises(
        clipfast.MissingDependencyError, match=re.escape("pip install 'clipfast[ray]'")
    ) as info:
        embed(tmp_path / "data", model_path, tmp_path / "out", ray=True)
    assert info.value.name == "ray"
    assert not (tmp_path / "out").exists()


def test_layout_is_what_autofaiss_and_clip_retrieval_read(tmp_path: Path, model_path: Path) -> None:
    """embedding_reader (autofaiss's reader) finds ``**/*.npy`` sorted as text, parses each header
    with the regular expressions below (2-D shape, float dtype, on the first line), takes the
    dtype of the first file, skips files of 0 rows, and pairs ``.npy`` with ``.parquet`` files by
    sorted position (ParquetNumpyReader)."""
    write_folder(tmp_path / "data")
    (tmp_path / "data" / "bad.jpg").write_bytes(b"no")
    out = tmp_path / "out"
    embed(tmp_path / "data", model_path, out, shard_size=3, batch_size=2, text=True)
    for folder in ("img_emb", "text_emb"):
        files = sorted(str(p) for p in (out / folder).glob("**/*.npy"))
        metas = sorted(str(p) for p in (out / "metadata").glob("**/*.parquet"))
        assert len(files) == len(metas) == 4
        for npy, meta in zip(files, metas):
            with open(npy, "rb") as f:
                first_line = f.read(300).split(b"\n")[0]
            shape = re.search(r"'shape': \(([0-9]+), ([0-9]+)\)", str(first_line))
            dtype = re.search(r"'descr': '([<f0-9]+)'", str(first_line))
            assert shape is not None and dtype is not None and dtype.group(1) == "<f2"
            rows = int(shape.group(1))
            assert rows > 0 and rows == pq.read_metadata(meta).num_rows
            assert Path(npy).name.split("_")[-1].split(".")[0] == Path(meta).name.split("_")[-1].split(".")[0]
    stats = [json.loads(p.read_text()) for p in sorted((out / "stats").glob("*.json"))]
    assert all(isinstance(v, (int, float)) for s in stats for v in s.values())  # clip-retrieval sums them
    assert sum(s["sample_count"] for s in stats) == 10 and sum(s["error_count"] for s in stats) == 1


def test_captions_left_out_when_some_are_missing(tmp_path: Path, model_path: Path, caplog: Any) -> None:
    paths = write_folder(tmp_path / "data")
    paths[3].with_suffix(".txt").unlink()
    summary = embed(tmp_path / "data", model_path, tmp_path / "out")
    assert summary.images and not summary.text and summary.rows == 10
    assert any("captions left out: only 9 of 10" in r.getMessage() for r in caplog.records)
    summary = embed(tmp_path / "data", model_path, tmp_path / "out2", text=True)
    assert summary.text and summary.rows == 9 and summary.errors == 1
    assert read_output(tmp_path / "out2")["errors"][0]["error"] == "no caption for this sample"


def test_a_caption_column_of_numbers_is_embedded_as_text_and_said(
    tmp_path: Path, model_path: Path, reference: Any, caplog: Any
) -> None:
    """A parquet caption column of integers: each value is embedded as its decimal text, as
    clip.tokenize(str(value)) would be, and the log says so once (found by the embed probe)."""
    numbers = [1984, 7, 42]
    pq.write_table(pa.table({"caption": numbers}), tmp_path / "numbers.parquet")
    summary = embed(tmp_path / "numbers.parquet", model_path, tmp_path / "out", dtype="fp32", normalize=False)
    texts = [str(n) for n in numbers]
    got = read_output(tmp_path / "out")
    assert summary.text and got["metadata"]["caption"] == texts
    assert torch.equal(torch.from_numpy(got["text_emb"]), reference_texts(reference, texts, [len(texts)]))
    said = [r.getMessage() for r in caplog.records if "not text" in r.getMessage()]
    assert len(said) == 1 and "numbers.parquet" in said[0] and "'caption' holds int values" in said[0]


def test_ray_datasink_writes_a_shard_once_all_its_rows_are_staged(tmp_path: Path) -> None:
    """The datasink's staging, without Ray: rows arrive in any order and in any grouping (a retried
    task may stage some twice); the shard is written, in input order, when every position is there."""
    from clipfast.embedding.output import Layout
    from clipfast.embedding.ray_pipeline import PARTS, ShardDatasink

    layout = Layout(str(tmp_path), 5, images=True, text=True)
    for folder in ("img_emb", "text_emb", "metadata", "stats", "errors"):
        (tmp_path / folder).mkdir()
    sink = ShardDatasink(layout, {0: 4})

    def rows(pos: list[int], errors: list[str]) -> dict[str, np.ndarray]:
        n = len(pos)
        return {
            "pos": np.asarray(pos),
            "shard": np.zeros(n, dtype=np.int64),
            "id": np.asarray([f"id{p}" for p in pos], dtype=object),
            "source": np.asarray([f"src{p}" for p in pos], dtype=object),
            "text": np.asarray([f"caption {p}" for p in pos], dtype=object),
            "error": np.asarray(errors, dtype=object),
            "read_s": np.zeros(n),
            "read_at": np.full(n, 1000.0 + min(pos)),
            "model_s": np.zeros(n),
            "img_emb": np.asarray([[p, 1.0] for p in pos], dtype=np.float16),
            "text_emb": np.asarray([[p, 2.0] for p in pos], dtype=np.float16),
        }

    sink._stage(0, rows([3, 1], ["", "bad image"]))
    sink._stage(0, rows([3], [""]))  # a retried task stages row 3 again: still 2 of 4 positions
    assert not sink.try_finish(0) and not layout.is_done(0)
    sink._stage(0, rows([2, 0], ["", ""]))
    assert sink.try_finish(0) and layout.is_done(0)
    assert not (tmp_path / PARTS / "0").exists()
    got = read_output(tmp_path)
    assert got["metadata"] == {
        "image_path": ["id0", "id2", "id3"],
        "caption": ["caption 0", "caption 2", "caption 3"],
    }
    assert got["img_emb"][:, 0].tolist() == [0, 2, 3] and got["text_emb"][:, 0].tolist() == [0, 2, 3]
    assert got["errors"] == [] and layout.errors(0) == [{"id": "id1", "source": "src1", "error": "bad image"}]
    assert not sink.try_finish(0)  # written once
    # The stats hold the local pipeline's durations (the docs' read/inference/write/total), the
    # start being when the shard's first rows were read: clip-retrieval's stats reader sums
    # total_duration for its per-sample averages, and a missing key counts there as 0.
    stats = json.loads((tmp_path / "stats" / "00000.json").read_text())
    assert {"start_time", "end_time", "read_duration", "inference_duration", "write_duration"} <= set(stats)
    assert stats["start_time"] == 1000.0
    assert stats["total_duration"] == pytest.approx(stats["end_time"] - 1000.0)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_open_clip_folder_model(tmp_path: Path, resize_mode: str) -> None:
    """Any model clipfast.load takes: an open_clip folder (GELU, 80-wide heads, context length 16),
    with clip's standard preprocessing (the batch path) and with open_clip's ``squash`` resize
    (its own preprocess object, image by image)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from open_clip_models import CONFIGS, open_clip_model
    from open_clip_models import write_folder as write_model_folder

    model_dir = write_model_folder(
        tmp_path / "model",
        CONFIGS["gelu_h80"],
        open_clip_model("gelu_h80").state_dict(),
        preprocess_cfg={"resize_mode": resize_mode},
    )
    paths = write_folder(tmp_path / "data")
    summary = embed(
        tmp_path / "data", model_dir, tmp_path / "out", batch_size=4, dtype="fp32", normalize=False
    )
    assert summary.text and summary.rows == len(paths) and summary.model_sha256
    got = read_output(tmp_path / "out")
    model, preprocess = clipfast.load(str(model_dir), device="cpu")
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in paths]
    sizes = batches_of(len(paths), 10_000, 4)
    assert torch.equal(torch.from_numpy(got["img_emb"]), reference_images((model, preprocess), paths, sizes))
    with torch.no_grad():
        want = torch.cat(
            [
                model.encode_text(clipfast.tokenize(captions[s : s + n], context_length=16, truncate=True))
                for s, n in zip(np.cumsum([0, *sizes[:-1]]), sizes)
            ]
        )
    assert torch.equal(torch.from_numpy(got["text_emb"]), want)
    # clip's standard steps go through preprocess_batch; open_clip's squash through its own object.
    assert ("mean" in summary.preprocess) == (resize_mode == "shortest"), summary.preprocess


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_unless_the_user_chose(given: str | None, expected: str) -> None:
    # torch's OpenMP threads spin by default and starve the reader threads on the CPU; OpenMP reads
    # the policy once, when torch loads, so clipfast.embedding sets it before importing torch.
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    package = str(Path(clipfast.__file__).parent.parent)
    code = (
        f"import sys, os; sys.path.insert(0, {package!r}); import clipfast; clipfast.embed; "
        "assert 'torch' in sys.modules; print(os.environ['OMP_WAIT_POLICY'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
