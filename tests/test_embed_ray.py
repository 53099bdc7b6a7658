"""``clipfast.embed(..., ray=True)``: the Ray Data pipeline, against a local Ray instance this test
starts (no other address). Kept lean: one Ray start for the module, a small model and ten images."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray Data (clipfast[ray]) is not installed")

sys.path.insert(0, str(Path(__file__).parent))
from test_embed import (  # noqa: E402
    model_path,  # noqa: F401  (a fixture)
    read_output,
    reference,  # noqa: F401  (a fixture)
    reference_images,
    reference_texts,
    write_folder,
)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=150 * 2**20,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_pipeline_equals_the_reference_and_resumes(
    tmp_path: Path,
    local_ray: None,
    model_path: Path,  # noqa: F811
    reference: Any,  # noqa: F811
) -> None:
    paths = write_folder(tmp_path / "data")
    (tmp_path / "data" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (tmp_path / "data" / "zz_broken.txt").write_text("caption of a broken image")
    out = tmp_path / "out"
    kw: dict[str, Any] = dict(shard_size=4, batch_size=3, dtype="fp32", normalize=False, progress=False)
    summary = clipfast.embed(tmp_path / "data", model=str(model_path), out=str(out), ray=True, **kw)
    assert summary.rows == 10 and summary.errors == 1 and summary.shards_written == 3 and summary.text
    got = read_output(out)
    assert got["metadata"]["image_path"] == [str(p) for p in paths]  # input order, whatever Ray's order
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in paths]
    assert got["metadata"]["caption"] == captions
    assert [Path(e["id"]).name for e in got["errors"]] == ["zz_broken.jpg"]
    # Row for row the reference (Ray may batch rows differently: matrix products of other shapes
    # round differently in the last bits, so the same tolerance as between batch sizes in torch).
    want_img = reference_images(reference, paths, [len(paths)])
    want_txt = reference_texts(reference, captions, [len(paths)])
    torch.testing.assert_close(torch.from_numpy(got["img_emb"]), want_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got["text_emb"]), want_txt, rtol=1e-5, atol=1e-5)
    # The same as the local pipeline writes.
    local = tmp_path / "local"
    clipfast.embed(tmp_path / "data", model=str(model_path), out=str(local), **kw)
    mine = read_output(local)
    assert mine["metadata"] == got["metadata"] and mine["errors"] == got["errors"]
    np.testing.assert_allclose(mine["img_emb"], got["img_emb"], rtol=1e-5, atol=1e-5)
    # The same stats files, key for key but the local pipeline's wait for data (found missing by a
    # probe: Ray's lacked start_time and total_duration, which clip-retrieval's stats reader sums).
    for stats in sorted((local / "stats").glob("*.json")):
        local_stats = json.loads(stats.read_text())
        ray_stats = json.loads((out / "stats" / stats.name).read_text())
        assert set(ray_stats) == set(local_stats) - {"wait_duration"}, stats.name
        assert 0 <= ray_stats["total_duration"] <= summary.seconds
        for key in ("sample_count", "error_count", "input_count"):
            assert ray_stats[key] == local_stats[key], (stats.name, key)
    # Staged rows are gone; a rerun finds every shard finished and runs nothing.
    assert not (out / ".clipfast_parts").exists()
    again = clipfast.embed(tmp_path / "data", model=str(model_path), out=str(out), ray=True, **kw)
    assert again.shards_written == 0 and again.shards_skipped == 3 and again.processed == 0
    # A shard lost (its stats file removed, as if killed before it was marked) is redone alone.
    stats = out / "stats" / "00001.json"
    before = json.loads(stats.read_text())
    stats.unlink()
    redo = clipfast.embed(tmp_path / "data", model=str(model_path), out=str(out), ray=True, **kw)
    assert redo.shards_written == 1 and redo.processed == 4
    assert json.loads(stats.read_text())["sample_count"] == before["sample_count"]
    assert read_output(out)["metadata"] == got["metadata"]
