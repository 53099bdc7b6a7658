"""The same job as a Ray Data pipeline (``embed(..., ray=True)``, ``clipfast embed --ray``).

rows (one per sample: position, shard, id, where its bytes are, caption)
  -> ``map_batches(read_and_preprocess)``: CPU tasks read the bytes and run clip's preprocessing
     (``preprocess_batch`` to uint8 pixels: a quarter of float32's bytes in the object store; the
     actor applies ToTensor + Normalize with the same float32 operations, so the result is bit for
     bit ``preprocess(Image.open(p))``)
  -> ``map_batches(ModelActor, compute=ActorPoolStrategy(size=n))``: the model, loaded once per
     actor with ``clipfast.load``, on a GPU when the cluster has them
  -> ``write_datasink(ShardDatasink)``: Ray does not keep the rows in order, so each row carries
     its position and shard; write tasks stage their rows per shard, and whichever task completes
     a shard (all its positions present) writes it in clip-retrieval's layout, sorted by position,
     through the same ``Layout.write_shard`` as the local pipeline.

Staged rows live in ``OUT/.clipfast_parts/N/`` until their shard is written; a run that is killed
loses only them (the next run removes them and redoes those shards). Ray is imported only here.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import torch

from ..errors import MissingDependencyError
from .encoder import Encoder, ImagePlan, finish, prepare_images
from .output import Layout, OutputFolder, ShardResult
from .sources import (
    Plan,
    Sample,
    Source,
    caption_text,
    close_handles,
    image_item,
    require_pyarrow,
)

if TYPE_CHECKING:
    from . import EmbedSummary

__all__ = ["ModelActor", "ShardDatasink", "read_and_preprocess", "run_ray"]

PARTS = ".clipfast_parts"
_TEXT_COLUMNS = ("id", "source", "text", "error")
_NUMBER_COLUMNS = ("pos", "shard", "read_at", "read_s", "model_s", "img_emb", "text_emb")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise MissingDependencyError(
            "clipfast embed --ray needs Ray Data: pip install 'clipfast[ray]' (Ray needs Python >= 3.10)",
            name="ray",
        ) from err
    return ray


# --- rows ----------------------------------------------------------------------------------------


def _rows(plan: Plan, shards: Iterable[int], batch_size: int) -> list[Any]:
    """The pending samples as Arrow tables of ``batch_size`` rows (one Ray block each; no block
    crosses a shard's end)."""
    pa = require_pyarrow("the Ray pipeline")
    tables = []
    for k in shards:
        r = plan.shard(k)
        for start in range(r.start, r.stop, batch_size):
            pos = list(range(start, min(start + batch_size, r.stop)))
            samples = [plan.samples[i] for i in pos]
            tables.append(
                pa.table(
                    {
                        "pos": pa.array(pos, pa.int64()),
                        "shard": pa.array([k] * len(pos), pa.int64()),
                        "id": [s.id for s in samples],
                        "image": [_where(s.image) for s in samples],
                        "caption": [s.caption for s in samples],
                        "caption_at": [_where(s.caption_source) for s in samples],
                        "error": [s.error for s in samples],
                    }
                )
            )
    return tables


def _where(src: Optional[Source]) -> Optional[str]:
    """A Source as one string column: ``path`` or ``offset:size:path``."""
    if src is None:
        return None
    return src.path if src.offset < 0 else f"{src.offset}:{src.size}:{src.path}"


def _source(text: Optional[str]) -> Optional[Source]:
    if text is None:
        return None
    head = text.split(":", 2)
    if len(head) == 3 and head[0].isdigit() and head[1].isdigit():
        return Source(head[2], int(head[0]), int(head[1]))
    return Source(text)


def _sample(row: dict[str, Any]) -> Sample:
    return Sample(
        str(row["id"]),
        _source(row["image"]),
        row["caption"],
        _source(row["caption_at"]),
        row["error"],
    )


# --- stage 1: CPU tasks --------------------------------------------------------------------------


def read_and_preprocess(batch: Any, *, images: bool, text: bool, image_plan: Optional[ImagePlan]) -> Any:
    """Read and preprocess one block (a pyarrow table) of rows; adds ``pixels`` (uint8 for clip's
    standard steps, else float32), ``text`` (the caption), ``source`` and the rows' ``error``."""
    t0 = time.perf_counter()
    read_at = time.time()  # when this block's reading began: the shard's start_time is the earliest
    rows = batch.to_pylist()
    samples = [_sample(r) for r in rows]
    errors: list[Optional[str]] = [s.error for s in samples]
    captions = [""] * len(samples)
    items: list[Union[str, bytes]] = []
    item_rows: list[int] = []
    handles: dict[str, int] = {}
    try:
        for i, s in enumerate(samples):
            if errors[i] is not None:
                continue
            if text:
                try:
                    captions[i] = caption_text(s, handles)
                except (OSError, ValueError) as err:
                    errors[i] = f"caption: {err}"
                    continue
            if images and s.image is not None:
                try:
                    items.append(image_item(s.image, handles))
                except OSError as err:
                    errors[i] = f"{type(err).__name__}: {err}"
                    continue
                item_rows.append(i)
    finally:
        close_handles(handles)
    out: dict[str, Any] = {
        "pos": np.asarray([r["pos"] for r in rows], dtype=np.int64),
        "shard": np.asarray([r["shard"] for r in rows], dtype=np.int64),
        "id": np.asarray([s.id for s in samples], dtype=object),
        "source": np.asarray([s.where() for s in samples], dtype=object),
        "text": np.asarray(captions, dtype=object),
    }
    if images and image_plan is not None:
        n = image_plan.n_px
        kind = torch.uint8 if image_plan.standard else torch.float32
        pixels = torch.zeros((len(rows), 3, n, n), dtype=kind)
        if items:
            good_pixels, good, failed = prepare_images(items, image_plan, threads=1, dtype=kind)
            for j, reason in failed.items():
                errors[item_rows[j]] = reason
            pixels[[item_rows[j] for j in good]] = good_pixels
        out["pixels"] = pixels.numpy()
    # "" for no error: a column of nothing but None can come back from Arrow as floats.
    out["error"] = np.asarray([e or "" for e in errors], dtype=object)
    out["read_s"] = np.full(len(rows), (time.perf_counter() - t0) / max(1, len(rows)))
    out["read_at"] = np.full(len(rows), read_at)
    return out


# --- stage 2: the model actors -------------------------------------------------------------------


class ModelActor:
    """Holds the model (loaded once per actor) and embeds the preprocessed rows of each batch."""

    def __init__(
        self,
        model: str,
        device: str,
        download_root: Optional[str],
        images: bool,
        text: bool,
        image_plan: Optional[ImagePlan],
        normalize: bool,
        dtype: str,
    ) -> None:
        threads = os.environ.get("OMP_NUM_THREADS")  # Ray sets it to the actor's CPUs
        if threads and threads.isdigit() and device == "cpu":
            torch.set_num_threads(max(1, int(threads)))
        self.encoder = Encoder(model, device, download_root)
        self.images, self.text = images, text
        self.plan = image_plan
        self.normalize = normalize
        self.dtype = torch.float16 if dtype == "float16" else torch.float32
        self.image_dim, self.text_dim = self.encoder.dims()

    def _pixels(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels))
        plan = self.plan
        if plan is not None and plan.standard:
            # ToTensor + Normalize with torch's float32 operations: what preprocess_batch's table holds.
            from ..transforms import Normalize

            x = Normalize(plan.mean or (), plan.std or ())(x.to(torch.float32).div(255))
        return x.to(self.encoder.input_dtype())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        errors = batch["error"]
        good = np.asarray([not (isinstance(e, str) and e) for e in errors], dtype=bool)
        idx = np.nonzero(good)[0]
        n = len(errors)
        out = {k: batch[k] for k in ("pos", "shard", "id", "source", "text", "error", "read_s", "read_at")}
        with torch.inference_mode():
            if self.images:
                emb = self._embed(idx, lambda: self.encoder.images(self._pixels(batch["pixels"][idx])))
                out["img_emb"] = self._scatter(emb, idx, n, self.image_dim)
            if self.text:
                captions = [str(batch["text"][i]) for i in idx]
                emb = self._embed(idx, lambda: self.encoder.texts(self.encoder.tokenize(captions)))
                out["text_emb"] = self._scatter(emb, idx, n, self.text_dim)
        out["model_s"] = np.full(n, (time.perf_counter() - t0) / max(1, n))
        return out

    def _embed(self, idx: np.ndarray, run: Callable[[], torch.Tensor]) -> Optional[np.ndarray]:
        if len(idx) == 0:
            return None
        return finish(run(), self.normalize, self.dtype)

    def _scatter(self, emb: Optional[np.ndarray], idx: np.ndarray, n: int, dim: int) -> np.ndarray:
        """Every row of the batch (failed ones as zeros, dropped by the datasink): one shape for all
        blocks, so Ray keeps a plain tensor column."""
        full = np.zeros((n, dim), dtype=torch.empty((), dtype=self.dtype).numpy().dtype)
        if emb is not None:
            full[idx] = emb
        return full


# --- stage 3: the datasink -----------------------------------------------------------------------


class ShardDatasink:
    """Writes rows to clip-retrieval's layout, one shard at a time, as shards complete.

    (Subclasses ``ray.data.Datasink`` at run time: see ``_datasink_class``.)"""

    def __init__(self, layout: Layout, expected: dict[int, int]) -> None:
        self.layout = layout
        self.expected = expected  # shard -> its number of samples

    def stage(self) -> Path:
        return Path(self.layout.root) / PARTS

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[int]:
        from ray.data.block import BlockAccessor

        touched: set[int] = set()
        for block in blocks:
            columns: dict[str, np.ndarray] = BlockAccessor.for_block(block).to_numpy()  # type: ignore[assignment]
            shards = np.asarray(columns["shard"])
            for k in np.unique(shards):
                rows = shards == k
                self._stage(int(k), {name: np.asarray(v)[rows] for name, v in columns.items()})
                touched.add(int(k))
        return sorted(k for k in touched if self.try_finish(k))

    def _stage(self, k: int, part: dict[str, np.ndarray]) -> None:
        folder = self.stage() / str(k)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name, values in part.items():
            if name in _TEXT_COLUMNS:
                # Strings or None, stored without pickle: the text, and a mask of the Nones. (Ray
                # may hand a column of nothing but None back as floats: NaN is None here too.)
                texts = [v if isinstance(v, str) else None for v in values.tolist()]
                if name == "error":
                    texts = [v or None for v in texts]
                arrays[f"{name}__none"] = np.asarray([v is None for v in texts], dtype=bool)
                arrays[name] = np.asarray(["" if v is None else v for v in texts], dtype=str)
            elif name in _NUMBER_COLUMNS:
                arrays[name] = values
        final = folder / f"part-{uuid.uuid4().hex}.npz"
        tmp = folder / f".{final.name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, final)

    def try_finish(self, k: int) -> bool:
        """Write shard ``k`` if all its rows are staged (one writer at a time, by a lock file)."""
        folder = self.stage() / str(k)
        if not folder.is_dir():
            return False
        lock = os.open(self.stage() / f"{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)
            except ImportError:
                pass
            if self.layout.is_done(k) or not folder.is_dir():
                return False
            files = sorted(folder.glob("part-*.npz"))
            positions: set[int] = set()
            for f in files:  # only the positions (a retried task may have staged rows twice)
                with np.load(f, allow_pickle=False) as data:
                    positions.update(data["pos"].tolist())
            if len(positions) < self.expected[k]:
                return False
            self.layout.write_shard(_assemble(k, [_load_part(f) for f in files], self.layout))
            shutil.rmtree(folder, ignore_errors=True)
            return True
        finally:
            os.close(lock)

    def on_write_complete(self, write_result: Any) -> None:
        for k in sorted(self.expected):
            self.try_finish(k)


def _load_part(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    out: dict[str, Any] = {}
    for name, values in arrays.items():
        if name.endswith("__none"):
            continue
        mask = arrays.get(f"{name}__none")
        if mask is not None:
            out[name] = [None if m else str(v) for v, m in zip(values.tolist(), mask.tolist())]
        else:
            out[name] = values
    return out


def _assemble(k: int, parts: list[dict[str, Any]], layout: Layout) -> ShardResult:
    """One shard's rows from its staged parts, in input order (duplicates, from a retried task,
    counted once)."""
    rows: dict[int, tuple[int, int]] = {}
    for p_index, p in enumerate(parts):
        for r, pos in enumerate(p["pos"].tolist()):
            rows.setdefault(int(pos), (p_index, r))
    order = sorted(rows)
    ids, captions, errors = [], [], []
    img, txt = [], []
    read_s = model_s = 0.0
    now = time.time()
    started = now
    for pos in order:
        p_index, r = rows[pos]
        p = parts[p_index]
        started = min(started, float(p["read_at"][r]))
        read_s += float(p["read_s"][r])
        model_s += float(p["model_s"][r])
        if p["error"][r] is not None:
            errors.append({"id": p["id"][r], "source": p["source"][r], "error": p["error"][r]})
            continue
        ids.append(p["id"][r])
        captions.append(p["text"][r])
        if layout.images:
            img.append(p["img_emb"][r])
        if layout.text:
            txt.append(p["text_emb"][r])
    return ShardResult(
        index=k,
        ids=ids,
        captions=captions if layout.text else None,
        image=np.stack(img) if img else None,
        text=np.stack(txt) if txt else None,
        errors=errors,
        stats={
            "start_time": started,
            "end_time": now,
            "read_duration": read_s,
            "inference_duration": model_s,
            # From the first of the shard's rows being read to the shard assembled, as the local
            # pipeline's (which also excludes the writing, counted in write_duration).
            "total_duration": now - started,
            "input_count": len(order),
        },
    )


def _datasink_class(ray: Any) -> type:
    """ShardDatasink as a ``ray.data.Datasink`` (defined here so Ray is imported only when used)."""

    class _ShardDatasink(ShardDatasink, ray.data.Datasink):
        def get_name(self) -> str:
            return "ClipfastShards"

    return _ShardDatasink


# --- the job -------------------------------------------------------------------------------------


def _cluster_has_gpu(ray: Any) -> bool:
    return float(ray.cluster_resources().get("GPU", 0)) > 0


def run_ray(
    plan: Plan,
    layout: Layout,
    manifest_for: Callable[[torch.device], tuple[dict[str, Any], dict[str, Any]]],
    *,
    model: Union[str, os.PathLike[str]],
    address: Optional[str],
    actors: Optional[int],
    device: Union[str, torch.device, None],
    batch_size: int,
    dtype: torch.dtype,
    normalize: bool,
    decode: str,
    download_root: Optional[str],
    progress: Optional[bool],
    started: float,
    summarize: Callable[..., EmbedSummary],
) -> EmbedSummary:
    ray = _import_ray()
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        started_ray = True
    try:
        if device is None:
            dev = torch.device("cuda" if _cluster_has_gpu(ray) else "cpu")
        else:
            dev = torch.device(device)
        settings, manifest = manifest_for(dev)
        folder = OutputFolder.open(layout.root, manifest, layout)
        try:
            shutil.rmtree(Path(layout.root) / PARTS, ignore_errors=True)  # a killed run's rows
            pending = folder.pending(plan.shard_count)
            processed = 0
            preprocess_desc: dict[str, Any] = {}
            n_actors = actors or (
                max(1, int(ray.cluster_resources().get("GPU", 0))) if dev.type == "cuda" else 1
            )
            if pending:
                image_plan = _image_plan(model, download_root, decode) if plan.images else None
                preprocess_desc = image_plan.describe() if image_plan else {}
                _run_dataset(
                    ray,
                    plan,
                    layout,
                    pending,
                    image_plan,
                    model=os.fspath(model),
                    device=dev,
                    actors=n_actors,
                    batch_size=batch_size,
                    dtype=dtype,
                    normalize=normalize,
                    download_root=download_root,
                    progress=progress,
                )
                processed = sum(len(plan.shard(k)) for k in pending if layout.is_done(k))
            missing = [k for k in pending if not layout.is_done(k)]
            if missing:
                raise RuntimeError(f"the Ray pipeline ended with shards {missing[:10]} not written")
            shutil.rmtree(Path(layout.root) / PARTS, ignore_errors=True)
            summary = summarize(
                layout,
                plan,
                manifest["model"],
                settings,
                device=str(dev),
                model_dtype=("float32" if dev.type == "cpu" else "float16") if pending else "-",
                preprocess=preprocess_desc,
                pending=len(pending),
                written=len(pending),
                processed=processed,
                seconds=time.perf_counter() - started,
                wait_share=None,
                extra={"batch_size": batch_size, "ray": True, "actors": n_actors},
            )
            folder.finish(plan.shard_count, summary.as_dict())
            return summary
        finally:
            folder.close()
    finally:
        if started_ray:
            ray.shutdown()


def _image_plan(model: Union[str, os.PathLike[str]], download_root: Optional[str], decode: str) -> ImagePlan:
    """The preprocessing of ``model`` without loading it on the driver: clipfast.load on the meta
    device would still read the file, so load on the CPU once (the driver needs no GPU)."""
    from ..load import load

    _, preprocess = load(model, device="cpu", download_root=download_root)
    return ImagePlan.of(preprocess, decode)


def _actor_cpus(ray: Any, actors: int, on_gpu: bool) -> int:
    """One CPU per GPU actor; on a CPU-only cluster the model's threads are its CPUs, so each actor
    takes an equal share of them, one CPU left for the read tasks (Ray gives an actor as many torch
    threads as CPUs, through OMP_NUM_THREADS)."""
    if on_gpu:
        return 1
    cpus = int(ray.cluster_resources().get("CPU", 1))
    per_node = max(
        (int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1
    )
    return max(1, min((cpus - 1) // max(1, actors), per_node))


def _one_cpu() -> dict[str, Any]:
    return {"num_cpus": 1}


def _run_dataset(
    ray: Any,
    plan: Plan,
    layout: Layout,
    pending: list[int],
    image_plan: Optional[ImagePlan],
    *,
    model: str,
    device: torch.device,
    actors: int,
    batch_size: int,
    dtype: torch.dtype,
    normalize: bool,
    download_root: Optional[str],
    progress: Optional[bool],
) -> None:
    ctx = ray.data.DataContext.get_current()
    if progress is False:
        ctx.enable_progress_bars = False
    ds = ray.data.from_arrow(_rows(plan, pending, batch_size))
    ds = ds.map_batches(
        read_and_preprocess,
        fn_kwargs={"images": plan.images, "text": plan.text, "image_plan": image_plan},
        batch_size=None,  # one block (= one batch of rows) per call
        batch_format="pyarrow",
        # CPU tasks of their own: with equal resources Ray would fuse this stage into the actors,
        # and the model would wait for every batch's decoding.
        ray_remote_args_fn=_one_cpu,
    )
    on_gpu = device.type == "cuda"
    ds = ds.map_batches(
        ModelActor,
        fn_constructor_kwargs={
            "model": model,
            "device": str(device),
            "download_root": download_root,
            "images": plan.images,
            "text": plan.text,
            "image_plan": image_plan,
            "normalize": normalize,
            "dtype": str(dtype).removeprefix("torch."),
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if on_gpu else 0,
        num_cpus=_actor_cpus(ray, actors, on_gpu),
    )
    expected = {k: len(plan.shard(k)) for k in pending}
    ds.write_datasink(_datasink_class(ray)(layout, expected))
