"""The local pipeline: reading and preprocessing either overlap the model or take turns with it.

On a GPU, or where torch leaves CPU cores free, a reader thread works ahead by ``prefetch``
batches (``preprocess_batch`` releases the GIL, so decoding and resizing run beside the model);
on a GPU the batches are in pinned memory and copied without blocking. On the CPU, where torch's
threads fill every core, each batch is preprocessed on all cores between two forward passes
instead (see ``overlaps``). The calling thread runs the model under ``inference_mode``, and the
time the model waits for a batch is measured either way.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

from .encoder import Encoder, ImagePlan, finish, prepare_images
from .sources import Plan, Sample, caption_text, close_handles, image_item

__all__ = ["Embedded", "Prepared", "overlaps", "prepare_batch", "run_local"]


@dataclass
class Prepared:
    """One batch of samples, read and preprocessed: the good rows' inputs and the failures."""

    shard: int
    last: bool  # the last batch of its shard
    count: int  # samples in the batch, failed ones included
    ids: list[str]
    captions: list[str]
    pixels: Optional[torch.Tensor]
    tokens: Optional[torch.Tensor]
    errors: list[dict[str, str]]
    read_s: float = 0.0


@dataclass
class Embedded:
    """One batch through the model: the good rows' ids, captions and embeddings, and the failures."""

    shard: int
    last: bool
    count: int
    ids: list[str]
    captions: list[str]
    image: Optional[np.ndarray]
    text: Optional[np.ndarray]
    errors: list[dict[str, str]]
    read_s: float = 0.0
    model_s: float = 0.0
    wait_s: float = 0.0


def _error(sample: Sample, reason: str) -> dict[str, str]:
    return {"id": sample.id, "source": sample.where(), "error": reason}


def prepare_batch(
    samples: Sequence[Sample],
    plan: Plan,
    image_plan: Optional[ImagePlan],
    encoder_dtype: torch.dtype,
    tokenize: Optional[object],
    *,
    shard: int,
    last: bool,
    threads: int,
    handles: Optional[dict[str, int]] = None,
    pin: bool = False,
) -> Prepared:
    """Read captions and image bytes, preprocess the images, tokenize the captions; every failure
    becomes an error entry and its sample leaves the batch (row i of image, text and metadata stays
    one sample)."""
    t0 = time.perf_counter()
    errors: list[dict[str, str]] = []
    alive: list[tuple[Sample, str, Union[str, bytes, None]]] = []
    for s in samples:
        if s.error is not None:
            errors.append(_error(s, s.error))
            continue
        caption = ""
        if plan.text:
            try:
                caption = caption_text(s, handles)
            except (OSError, ValueError) as err:
                errors.append(_error(s, f"caption: {err}"))
                continue
        item: Union[str, bytes, None] = None
        if plan.images and s.image is not None:
            try:
                item = image_item(s.image, handles)
            except OSError as err:
                errors.append(_error(s, f"{type(err).__name__}: {err}"))
                continue
        alive.append((s, caption, item))
    pixels: Optional[torch.Tensor] = None
    if plan.images and image_plan is not None:
        items = [a[2] for a in alive]
        if items:
            pixels, good, failed = prepare_images(
                items,  # type: ignore[arg-type]
                image_plan,
                threads=threads,
                dtype=encoder_dtype,
            )
            for i in sorted(failed):
                errors.append(_error(alive[i][0], failed[i]))
            alive = [alive[i] for i in good]
        else:
            pixels = torch.empty((0, 3, image_plan.n_px, image_plan.n_px), dtype=encoder_dtype)
    captions = [a[1] for a in alive]
    tokens: Optional[torch.Tensor] = None
    if plan.text and tokenize is not None:
        tokens = tokenize(captions)  # type: ignore[operator]
    if pin and torch.cuda.is_available():
        pixels = pixels.pin_memory() if pixels is not None and len(pixels) else pixels
        tokens = tokens.pin_memory() if tokens is not None and len(tokens) else tokens
    return Prepared(
        shard,
        last,
        len(samples),
        [a[0].id for a in alive],
        captions if plan.text else [],
        pixels,
        tokens,
        errors,
        time.perf_counter() - t0,
    )


@dataclass
class _Failure:
    error: BaseException


@dataclass
class _Batches:
    """The batches of the shards to do, in order (a shard's batches never cross its end)."""

    plan: Plan
    shards: Sequence[int]
    batch_size: int
    steps: list[tuple[int, int, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for k in self.shards:
            r = self.plan.shard(k)
            for start in range(r.start, r.stop, self.batch_size):
                stop = min(start + self.batch_size, r.stop)
                self.steps.append((k, start, stop, stop == r.stop))


def overlaps(encoder: Encoder, workers: int) -> bool:
    """Whether the reader runs beside the model (True) or takes turns with it (False).

    On a GPU the model leaves the CPU to the reader. On the CPU torch's threads fill the cores:
    a reader beside them preempts one, and the others wait for it where each parallel region ends.
    On the 2-core VM the forward pass ran 10-20% slower beside the reader, far more than the
    preprocessing it hid (about 5% of the model's CPU time); taking turns costs only that 5%
    (ViT-B/32, batch 32, 1,000 JPEGs, 3 interleaved rounds, 2026-12-07: whole job 53.2 s
    overlapped, 48.0 s in turns, forward pass alone 43.3 s). Where torch's threads and the
    reader's fit in the cores together, they overlap on the CPU too.
    """
    if encoder.on_gpu:
        return True
    return torch.get_num_threads() + workers <= _cores()


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def run_local(
    plan: Plan,
    encoder: Encoder,
    shards: Sequence[int],
    *,
    batch_size: int,
    workers: int,
    normalize: bool,
    dtype: torch.dtype,
    decode: str = "exact",
    prefetch: int = 2,
    overlap: Optional[bool] = None,
) -> Iterator[Embedded]:
    """The embedded batches of ``shards``, in order. ``overlap``: run the reader beside the model
    or in turns with it (default: :func:`overlaps`)."""
    image_plan = ImagePlan.of(encoder.preprocess, decode) if plan.images else None
    steps = _Batches(plan, shards, batch_size).steps
    input_dtype = encoder.input_dtype()
    tokenize = encoder.tokenize if plan.text else None
    handles: dict[str, int] = {}

    def prepare(k: int, start: int, stop_at: int, last: bool) -> Prepared:
        return prepare_batch(
            plan.samples[start:stop_at],
            plan,
            image_plan,
            input_dtype,
            tokenize,
            shard=k,
            last=last,
            threads=workers,
            handles=handles,
            pin=encoder.on_gpu,
        )

    if overlap is None:
        overlap = overlaps(encoder, workers)
    batches = _ahead(steps, prepare, prefetch) if overlap else _in_turns(plan, steps, prepare)
    try:
        with torch.inference_mode():
            for item, waited in batches:
                yield _through_model(item, encoder, normalize, dtype, waited)
    finally:
        batches.close()  # stops and joins the reader thread
        close_handles(handles)


_Step = tuple[int, int, int, bool]
_Feed = Generator[tuple[Prepared, float], None, None]  # each batch and how long the model waited


def _in_turns(
    plan: Plan, steps: Sequence[_Step], prepare: Callable[[int, int, int, bool], Prepared]
) -> _Feed:
    """Each batch prepared when the model asks for it, on all the reader's threads. The next
    batch's files are advised to the kernel first, so their reading overlaps the model anyway."""
    for i, step in enumerate(steps):
        t0 = time.perf_counter()
        batch = prepare(*step)
        if i + 1 < len(steps):
            _, start, stop_at, _ = steps[i + 1]
            _will_read(plan.samples[start:stop_at])
        yield batch, time.perf_counter() - t0


def _will_read(samples: Sequence[Sample]) -> None:
    """Ask the kernel to read these samples' image files in the background (POSIX only)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for s in samples:
        if s.image is None or s.error is not None:
            continue
        try:
            # Without blocking: opening a FIFO would wait for a writer (the read reports it).
            fd = os.open(s.image.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue  # reported when the batch is read
        try:
            offset, size = (0, 0) if s.image.offset < 0 else (s.image.offset, s.image.size)
            advise(fd, offset, size, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _ahead(
    steps: Sequence[_Step], prepare: Callable[[int, int, int, bool], Prepared], prefetch: int
) -> _Feed:
    """The batches from a reader thread working up to ``prefetch`` batches ahead."""
    ready: queue.Queue[Union[Prepared, _Failure, None]] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(item: Union[Prepared, _Failure, None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for step in steps:
                if stop.is_set() or not put(prepare(*step)):
                    return
            put(None)
        except BaseException as err:  # handed to the consumer, which raises it
            put(_Failure(err))

    thread = threading.Thread(target=reader, name="clipfast-embed-reader", daemon=True)
    thread.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = ready.get()
            waited = time.perf_counter() - t0
            if item is None:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item, waited
    finally:
        stop.set()
        thread.join()


def _through_model(
    p: Prepared, encoder: Encoder, normalize: bool, dtype: torch.dtype, waited: float
) -> Embedded:
    t0 = time.perf_counter()
    image = text = None
    if len(p.ids):  # a batch whose every sample failed has no rows to embed
        if p.pixels is not None:
            image = finish(encoder.images(p.pixels), normalize, dtype)
        if p.tokens is not None:
            text = finish(encoder.texts(p.tokens), normalize, dtype)
    return Embedded(
        p.shard,
        p.last,
        p.count,
        p.ids,
        p.captions,
        image,
        text,
        p.errors,
        p.read_s,
        time.perf_counter() - t0,
        waited,
    )
