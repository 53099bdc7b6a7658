"""``clipfast.embed``: embeddings of whole datasets of images and captions, in clip-retrieval's layout.

::

    clipfast.embed(["photos/", "shards/*.tar"], model="ViT-B/32", out="embeddings/")
    for ids, embeddings in clipfast.embed_batches("photos/", model="ViT-B/32"):
        ...

The same job runs from the command line (``clipfast embed INPUT... --model M --out DIR``) and, with
``ray=True`` or an address, as a Ray Data pipeline. See docs/embed.md.

Modules: ``sources`` (inputs -> samples in a fixed order), ``encoder`` (preprocessing and the
model), ``pipeline`` (the local model loop, fed by a reader thread ahead of it or in turns with
it), ``output`` (the folder: layout, shards, resumption), ``ray_pipeline`` (the Ray Data job and
its datasink).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Optional, Union

import numpy as np

# On the CPU the reader threads share the cores with torch's OpenMP threads, which by default spin
# after every parallel region and burn the cycles the reader needs (measured on a 2-core VM, 256
# JPEGs, ViT-B/32: the job 2.6 -> 3.2 images/s, its CPU seconds 36.8 -> 28.6). OpenMP reads this
# once, when torch loads it: set here only when torch is not loaded yet and the user has not chosen.
if "torch" not in sys.modules and not os.environ.get("OMP_WAIT_POLICY"):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch

from .._native import __version__
from .encoder import Encoder, ImagePlan, model_identity, resolve_dtype
from .output import FORMAT, Layout, OutputFolder, ShardResult, combined, shard_width
from .pipeline import Embedded, run_local
from .sources import Plan, list_samples, make_plan, plan_for, require_pyarrow

__all__ = ["EmbedSummary", "embed", "embed_batches"]

log = logging.getLogger("clipfast.embed")

PathLike = Union[str, "os.PathLike[str]"]
Inputs = Union[PathLike, Sequence[PathLike]]
DtypeArg = Union[Literal["fp16", "fp32"], torch.dtype]


@dataclass
class EmbedSummary:
    """What a run of ``embed`` did (also written to ``OUT/summary.json``)."""

    out: str
    model: str
    model_sha256: Optional[str]
    device: str
    model_dtype: str  # the model's dtype as loaded on the device ("-" when this run loaded none)
    dtype: str
    normalize: bool
    preprocess: dict[str, Any]
    inputs: list[str]
    samples: int  # in the whole input
    shards: int
    shards_skipped: int  # already finished by an earlier run
    shards_written: int  # by this run
    rows: int  # embedded rows in the whole folder
    errors: int  # failed samples in the whole folder (OUT/errors.jsonl)
    processed: int  # samples this run went through (rows + errors)
    seconds: float  # this run, from the call to the end
    items_per_second: float  # processed / seconds
    model_wait_share: Optional[float]  # of the model loop's time, the share spent waiting for data
    images: bool = True
    text: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        what = " + ".join(w for w, on in (("images", self.images), ("captions", self.text)) if on)
        wait = "" if self.model_wait_share is None else f", model waited {100 * self.model_wait_share:.1f}%"
        sha = self.model_sha256 or "unknown"
        norm = "L2-normalised" if self.normalize else "not normalised"
        return "\n".join(
            [
                f"out:        {self.out}",
                f"model:      {self.model} (sha256 {sha}), {self.device}, {self.model_dtype}",
                f"embedded:   {what}; {self.dtype}, {norm}",
                f"shards:     {self.shards} "
                f"({self.shards_skipped} finished before, {self.shards_written} written now)",
                f"rows:       {self.rows} embedded, {self.errors} failed (errors.jsonl)",
                f"this run:   {self.processed} samples in {self.seconds:.1f} s, "
                f"{self.items_per_second:.1f} items/s{wait}",
            ]
        )


def _check_batch_size(batch_size: Optional[int], on_gpu: bool) -> int:
    if batch_size is None:
        return 256 if on_gpu else 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
    return batch_size


def _workers(workers: Optional[int]) -> int:
    if workers is None:
        return max(1, torch.get_num_threads())
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, not {workers!r}")
    return workers


def _device_of(device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def embed(
    inputs: Inputs,
    model: PathLike,
    out: PathLike,
    *,
    batch_size: Optional[int] = None,
    workers: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    dtype: DtypeArg = "fp16",
    normalize: bool = True,
    shard_size: int = 10_000,
    text: Optional[bool] = None,
    input_format: str = "auto",
    image_column: str = "image_path",
    caption_column: str = "caption",
    decode: Literal["exact", "fast"] = "exact",
    download_root: Optional[str] = None,
    progress: Optional[bool] = None,
    ray: Union[bool, str] = False,
    actors: Optional[int] = None,
) -> EmbedSummary:
    """Embed every image (and caption) of ``inputs`` with ``model`` into the folder ``out``.

    ``inputs``: folders (recursive; ``a.txt`` beside ``a.jpg`` is its caption), text files of
    image paths, glob patterns, WebDataset ``.tar`` shards, ``.csv`` / ``.parquet`` tables of
    ``image_path`` (``image_column``) and ``caption`` (``caption_column``), text or ``.jsonl``
    files of captions (a text-only job); ``input_format`` forces one kind for all. ``model``: any
    name or path ``clipfast.load`` takes. The output is clip-retrieval's layout (see
    ``clipfast.embedding.output``): ``img_emb/``, ``text_emb/``, ``metadata/``, ``stats/``, with
    L2-normalised (``normalize``) embeddings in ``dtype`` (``"fp16"``, the default, as
    clip-retrieval, or ``"fp32"``; also ``torch.float16`` / ``torch.float32``). ``text``: None
    embeds captions where every sample has one, ``True`` also where some lack one (those become
    errors), ``False`` leaves captions out of an image job. ``input_format``: ``"auto"`` (each
    input told apart), or one of ``"folder"``, ``"paths"``, ``"glob"``, ``"tar"``, ``"table"``,
    ``"captions"``, ``"image"`` for all. ``download_root``: the cache folder for an official model
    name (as ``load``'s).

    The samples are cut into shards of ``shard_size`` in input order; each finished shard is on
    disk for good, and a rerun with the same arguments skips it (no model work); a folder written
    with another model, other settings or other inputs raises ``OutputFolderError``. Samples that
    cannot be read (broken, truncated, not an image, no caption where the job has captions) go to
    ``errors.jsonl`` with the reason, and the run goes on.

    ``batch_size``: samples per model call (default 256 on a GPU, 32 on the CPU); ``workers``:
    preprocessing threads (default ``torch.get_num_threads()``); ``device`` (default CUDA when
    available); ``decode="fast"`` (see ``preprocess_batch``); ``progress``: a progress bar
    (default: when stderr is a terminal). ``ray=True`` (or a Ray address) runs the job as a Ray
    Data pipeline with ``actors`` model actors (default one per GPU of the cluster, or 1; needs
    ``clipfast[ray]``). Needs pyarrow (``clipfast[embed]``): ``MissingDependencyError`` without it.
    Arguments that name no readable input are ``InputError``."""
    started = time.perf_counter()
    require_pyarrow("the metadata files (parquet)")
    if ray is not False and ray is not None:
        from .ray_pipeline import _import_ray

        _import_ray()  # before the inputs are listed and the model hashed (an hf-hub: model downloaded)
    out_dtype = resolve_dtype(dtype)
    dev = _device_of(device)
    if decode not in ("exact", "fast"):
        raise ValueError(f'decode must be "exact" or "fast", not {decode!r}')
    size = _check_batch_size(batch_size, dev.type == "cuda")
    threads = _workers(workers)
    # The model file is hashed (Rust, GIL released) while the inputs are listed.
    with ThreadPoolExecutor(1, thread_name_prefix="clipfast-model-hash") as pool:
        identity_job = pool.submit(model_identity, model)
        plan = make_plan(
            _as_list(inputs),
            shard_size=shard_size,
            input_format=input_format,
            text=text,
            image_column=image_column,
            caption_column=caption_column,
        )
        identity = identity_job.result()
    layout = Layout(os.fspath(out), shard_width(plan.shard_count), plan.images, plan.text)
    if ray is not False and ray is not None:
        from .ray_pipeline import run_ray

        def manifest_for(dev: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
            settings = job_settings(plan, out_dtype, normalize, dev, decode)
            return settings, job_manifest(identity, settings, plan, layout, _as_list(inputs))

        return run_ray(
            plan,
            layout,
            manifest_for,
            model=model,
            address=ray if isinstance(ray, str) else None,
            actors=actors,
            device=device,
            batch_size=size,
            dtype=out_dtype,
            normalize=normalize,
            decode=decode,
            download_root=download_root,
            progress=progress,
            started=started,
            summarize=make_summary,
        )
    settings = job_settings(plan, out_dtype, normalize, dev, decode)
    manifest = job_manifest(identity, settings, plan, layout, _as_list(inputs))
    folder = OutputFolder.open(layout.root, manifest, layout)
    try:
        pending = folder.pending(plan.shard_count)
        written = processed = 0
        model_s = wait_s = 0.0
        preprocess_desc: dict[str, Any] = {}
        model_dtype = "-"
        if pending:
            encoder = Encoder(model, dev, download_root)
            model_dtype = str(encoder.dtype).removeprefix("torch.")
            image_plan = ImagePlan.of(encoder.preprocess, decode) if plan.images else None
            preprocess_desc = image_plan.describe() if image_plan else {}
            total = sum(len(plan.shard(k)) for k in pending)
            bar = progress_bar(total, progress, "img" if plan.images else "text")
            parts: list[Embedded] = []
            shard_started = time.time()
            try:
                for batch in run_local(
                    plan,
                    encoder,
                    pending,
                    batch_size=size,
                    workers=threads,
                    normalize=normalize,
                    dtype=out_dtype,
                    decode=decode,
                ):
                    parts.append(batch)
                    processed += batch.count
                    model_s += batch.model_s
                    wait_s += batch.wait_s
                    bar.update(batch.count)
                    if batch.last:
                        layout.write_shard(_shard_result(parts, shard_started))
                        written += 1
                        parts = []
                        shard_started = time.time()
            finally:
                bar.close()
        summary = make_summary(
            layout,
            plan,
            identity,
            settings,
            device=str(dev),
            model_dtype=model_dtype,
            preprocess=preprocess_desc,
            pending=len(pending),
            written=written,
            processed=processed,
            seconds=time.perf_counter() - started,
            wait_share=wait_s / (wait_s + model_s) if model_s + wait_s > 0 else None,
            extra={"batch_size": size, "workers": threads, "model_seconds": model_s, "wait_seconds": wait_s},
        )
        folder.finish(plan.shard_count, summary.as_dict())
        return summary
    finally:
        folder.close()


def make_summary(
    layout: Layout,
    plan: Plan,
    identity: dict[str, Optional[str]],
    settings: dict[str, Any],
    *,
    device: str,
    model_dtype: str,
    preprocess: dict[str, Any],
    pending: int,
    written: int,
    processed: int,
    seconds: float,
    wait_share: Optional[float],
    extra: dict[str, Any],
) -> EmbedSummary:
    rows, errors = _folder_counts(layout, plan.shard_count)
    return EmbedSummary(
        out=layout.root,
        model=identity["name"] or "",
        model_sha256=identity["sha256"],
        device=device,
        model_dtype=model_dtype,
        dtype=settings["dtype"],
        normalize=settings["normalize"],
        preprocess=preprocess,
        inputs=plan.descriptions,
        samples=len(plan.samples),
        shards=plan.shard_count,
        shards_skipped=plan.shard_count - pending,
        shards_written=written,
        rows=rows,
        errors=errors,
        processed=processed,
        seconds=seconds,
        items_per_second=processed / seconds if seconds > 0 else 0.0,
        model_wait_share=wait_share,
        images=plan.images,
        text=plan.text,
        extra=extra,
    )


def embed_batches(
    inputs: Inputs,
    model: PathLike,
    *,
    batch_size: Optional[int] = None,
    workers: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    dtype: DtypeArg = "fp16",
    normalize: bool = True,
    modality: Optional[Literal["image", "text"]] = None,
    input_format: str = "auto",
    image_column: str = "image_path",
    caption_column: str = "caption",
    decode: Literal["exact", "fast"] = "exact",
    download_root: Optional[str] = None,
    on_error: Optional[Callable[[dict[str, str]], None]] = None,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield ``(ids, embeddings)`` batches of ``inputs`` (read as ``embed`` reads them), in input
    order, writing nothing: ``embeddings`` is a numpy array ``[len(ids), dim]`` in ``dtype``.

    ``modality``: ``"image"`` (default when the inputs hold images) or ``"text"`` (their captions).
    The other arguments are ``embed``'s. Each batch is cut from ``batch_size`` samples; those
    that fail are left out of it (so a batch may be shorter) and passed to ``on_error`` (a dict
    with ``id``, ``source``, ``error``; by default they are logged as warnings on the
    ``clipfast.embed`` logger)."""
    out_dtype = resolve_dtype(dtype)
    dev = _device_of(device)
    size = _check_batch_size(batch_size, dev.type == "cuda")
    threads = _workers(workers)
    if modality not in (None, "image", "text"):
        raise ValueError(f'modality must be "image", "text" or None, not {modality!r}')
    if decode not in ("exact", "fast"):
        raise ValueError(f'decode must be "exact" or "fast", not {decode!r}')
    samples, descriptions = list_samples(
        _as_list(inputs), input_format=input_format, image_column=image_column, caption_column=caption_column
    )
    if modality is None:  # the images when there are any, else the captions
        modality = "image" if any(s.image is not None and s.error is None for s in samples) else "text"
    if modality == "image":
        plan = plan_for(samples, descriptions, shard_size=size, text=False)
    else:
        plan = plan_for(samples, descriptions, shard_size=size, text=True, images=False)
    report = on_error or (lambda e: log.warning("%s (%s): %s", e["id"], e["source"], e["error"]))
    return _batches(plan, model, dev, download_root, size, threads, normalize, out_dtype, decode, report)


def _batches(
    plan: Plan,
    model: PathLike,
    dev: torch.device,
    download_root: Optional[str],
    size: int,
    threads: int,
    normalize: bool,
    out_dtype: torch.dtype,
    decode: str,
    report: Callable[[dict[str, str]], None],
) -> Iterator[tuple[list[str], np.ndarray]]:
    encoder = Encoder(model, dev, download_root)
    shards = list(range(plan.shard_count))
    for batch in run_local(
        plan,
        encoder,
        shards,
        batch_size=size,
        workers=threads,
        normalize=normalize,
        dtype=out_dtype,
        decode=decode,
    ):
        for e in batch.errors:
            report(e)
        emb = batch.image if plan.images else batch.text
        if batch.ids and emb is not None:
            yield batch.ids, emb


def _as_list(inputs: Inputs) -> list[PathLike]:
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    return list(inputs)


def job_settings(
    plan: Plan, out_dtype: torch.dtype, normalize: bool, device: torch.device, decode: str
) -> dict[str, Any]:
    """What the embeddings depend on besides the model and the inputs: a rerun must match it. The
    kind of device decides the model's dtypes (``clipfast.load``: fp32 on the CPU, clip's fp16
    layout elsewhere), so a job started on a GPU does not go on on a CPU, or the other way."""
    return {
        "images": plan.images,
        "text": plan.text,
        "dtype": str(out_dtype).removeprefix("torch."),
        "normalize": bool(normalize),
        "device_type": device.type,
        "decode": decode,
    }


def job_manifest(
    identity: dict[str, Optional[str]],
    settings: dict[str, Any],
    plan: Plan,
    layout: Layout,
    inputs: Sequence[PathLike],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": identity,
        "settings": settings,
        "input": {
            "samples": len(plan.samples),
            "sha256": plan.fingerprint(),
            "shard_size": plan.shard_size,
            "shards": plan.shard_count,
            "width": layout.width,
        },
        "inputs": [os.fspath(i) for i in inputs],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "clipfast_version": __version__,
    }


def _shard_result(parts: Sequence[Embedded], started: float) -> ShardResult:
    return ShardResult(
        index=parts[0].shard,
        ids=[i for p in parts for i in p.ids],
        captions=[c for p in parts for c in p.captions],
        image=combined([p.image for p in parts]),
        text=combined([p.text for p in parts]),
        errors=[e for p in parts for e in p.errors],
        stats={
            "start_time": started,
            "end_time": time.time(),
            "read_duration": sum(p.read_s for p in parts),
            "inference_duration": sum(p.model_s for p in parts),
            "wait_duration": sum(p.wait_s for p in parts),
            "total_duration": time.time() - started,
            "input_count": sum(p.count for p in parts),
        },
    )


def _folder_counts(layout: Layout, shard_count: int) -> tuple[int, int]:
    rows = errors = 0
    for k in range(shard_count):
        try:
            stats = json.loads(layout.path("stats", k).read_text())
        except (OSError, ValueError):
            continue
        rows += int(stats.get("sample_count", 0))
        errors += int(stats.get("error_count", 0))
    return rows, errors


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, progress: Optional[bool], unit: str) -> Any:
    """tqdm's bar (items/s and ETA); ``progress=None``: only when stderr is a terminal."""
    if progress is False:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(
        total=total, unit=unit, smoothing=0.1, disable=None if progress is None else False, dynamic_ncols=True
    )
