"""The work on each batch: images and captions in, embeddings out, as clip users compute them.

``prepare_images`` is the CPU side (decode + clip's preprocessing through ``preprocess_batch``,
bit for bit ``preprocess(Image.open(p))``), ``Encoder`` the model side (``encode_image`` /
``encode_text`` under ``inference_mode``, then clip-retrieval's ``x / x.norm(dim=-1)`` in the
model's dtype and the cast to the stored dtype). The local pipeline and the Ray pipeline share both.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = ["Encoder", "ImagePlan", "model_identity", "prepare_images", "resolve_dtype"]

_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")  # in Pillow's messages
_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """The stored dtype of the embeddings: ``"fp16"`` (default, as clip-retrieval) or ``"fp32"``."""
    if isinstance(dtype, torch.dtype) and dtype in (torch.float16, torch.float32):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be 'fp16' or 'fp32' (or torch.float16 / torch.float32), not {dtype!r}")


@dataclass(frozen=True)
class ImagePlan:
    """How images become the model's input: clip's standard steps (run by ``preprocess_batch``)
    for ``n_px``, ``mean``, ``std``, or the preprocess object itself, one image at a time."""

    n_px: int
    mean: Optional[tuple[float, ...]]
    std: Optional[tuple[float, ...]]
    preprocess: Any  # the object clipfast.load returned (picklable)
    decode: str = "exact"

    @property
    def standard(self) -> bool:
        return self.mean is not None

    def describe(self) -> dict[str, Any]:
        if self.standard:
            return {
                "steps": "Resize(bicubic) CenterCrop RGB ToTensor Normalize",
                "n_px": self.n_px,
                "mean": list(self.mean or ()),
                "std": list(self.std or ()),
                "decode": self.decode,
            }
        return {"steps": repr(self.preprocess), "n_px": self.n_px, "decode": "exact"}

    @classmethod
    def of(cls, preprocess: Any, decode: str = "exact") -> ImagePlan:
        from ..transforms import _standard_plan

        steps = getattr(preprocess, "transforms", None)
        plan = _standard_plan(steps) if isinstance(steps, list) else None
        if plan is not None:
            n_px, mean, std = plan
            return cls(n_px, mean, std, preprocess, decode)
        if decode != "exact":
            raise ValueError("decode='fast' needs clip's standard preprocessing steps")
        return cls(_resolution(preprocess), None, None, preprocess, "exact")


def _resolution(preprocess: Any) -> int:
    for step in getattr(preprocess, "transforms", []):
        size = getattr(step, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(size[0])
    return 0


def prepare_images(
    items: Sequence[Union[str, bytes]],
    plan: ImagePlan,
    *,
    threads: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[int], dict[int, str]]:
    """Preprocess ``items`` (paths or encoded bytes): ``(tensor of the good ones, their indices,
    {index: reason} for the others)``."""
    from ..errors import ImageError
    from ..transforms import preprocess_batch

    if plan.standard:
        out, bad = preprocess_batch(
            items,
            plan.n_px,
            threads=threads,
            dtype=dtype,
            on_error="skip",
            decode=plan.decode,  # type: ignore[arg-type]
            mean=plan.mean or (),
            std=plan.std or (),
        )
        errors: dict[int, str] = {}
        for i in bad:  # rare: run each alone for its message (the errors file has the path)
            try:
                preprocess_batch([items[i]], plan.n_px, threads=1, dtype=dtype, decode=plan.decode)  # type: ignore[arg-type]
                errors[i] = "could not be preprocessed"
            except ImageError as err:
                errors[i] = _BUFFER.sub("the data", str(err).removeprefix("item 0: "))
            except Exception as err:
                errors[i] = f"{type(err).__name__}: {err}"
        good = [i for i in range(len(items)) if i not in errors]
        return out, good, errors
    return _prepare_one_by_one(items, plan.preprocess, threads, dtype)


def _prepare_one_by_one(
    items: Sequence[Union[str, bytes]], preprocess: Any, threads: int, dtype: torch.dtype
) -> tuple[torch.Tensor, list[int], dict[int, str]]:
    from PIL import Image

    def one(item: Union[str, bytes]) -> Union[torch.Tensor, str]:
        try:
            with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as img:
                return preprocess(img)
        except Exception as err:  # reported per item
            return f"{type(err).__name__}: {err}"

    if threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
            results = list(pool.map(one, items))
    else:
        results = [one(item) for item in items]
    errors = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    good = [i for i in range(len(items)) if i not in errors]
    tensors = [r for r in results if isinstance(r, torch.Tensor)]
    if not tensors:
        return torch.empty((0, 3, 1, 1), dtype=dtype), good, errors
    return torch.stack(tensors).to(dtype), good, errors


class Encoder:
    """The model of a job, loaded with ``clipfast.load`` (so every name and path it accepts works)."""

    def __init__(
        self,
        model: Union[str, os.PathLike[str]],
        device: Union[str, torch.device, None],
        download_root: Optional[str],
    ) -> None:
        from ..load import load

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.preprocess = load(model, device=device, download_root=download_root)
        self.model.eval()
        self.device = torch.device(device)
        self.dtype = _model_dtype(self.model)
        self.context_length = int(getattr(self.model, "context_length", 77))
        self.on_gpu = self.device.type == "cuda"

    def dims(self) -> tuple[int, int]:
        """The widths of the image and the text embeddings."""
        image = getattr(getattr(self.model, "visual", None), "output_dim", None)
        projection = getattr(self.model, "text_projection", None)
        text = projection.shape[-1] if isinstance(projection, torch.Tensor) else None
        if isinstance(image, int) and isinstance(text, int):
            return image, text
        with torch.inference_mode():  # another model class: ask it
            n = int(getattr(getattr(self.model, "visual", None), "input_resolution", 224))
            x = torch.zeros((1, 3, n, n), dtype=self.input_dtype(), device=self.device)
            image = int(self.model.encode_image(x).shape[-1])
            text = int(self.texts(self.tokenize([""])).shape[-1])
        return image, text

    def input_dtype(self) -> torch.dtype:
        """The dtype preprocessing produces: the model's own where it takes half precision (rounding
        the float32 result once, as ``x.type(model.dtype)`` inside the model does)."""
        return self.dtype if self.dtype in (torch.float16, torch.bfloat16) else torch.float32

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, non_blocking=True)
        return self.model.encode_image(x)

    def texts(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.to(self.device, non_blocking=True)
        return self.model.encode_text(t)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        from ..tokenizer import tokenize

        return tokenize(list(captions), context_length=self.context_length, truncate=True)


def finish(features: torch.Tensor, normalize: bool, dtype: torch.dtype) -> np.ndarray:
    """clip-retrieval's last steps: ``x /= x.norm(dim=-1, keepdim=True)`` in the model's dtype, then
    the stored dtype, on the CPU."""
    if normalize:
        features = features / features.norm(dim=-1, keepdim=True)
    return features.to("cpu").to(dtype).numpy()


def _model_dtype(model: Any) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_identity(model: Union[str, os.PathLike[str]]) -> dict[str, Optional[str]]:
    """The model's name and SHA-256: the official one for a name; for anything else what
    ``clipfast.load`` would read (``formats.locate``: a file, a model folder, ``local-dir:``,
    ``hf-hub:``): its weights file's SHA-256, or where a configuration file comes with the weights,
    the SHA-256 of both hashes (``"weights <sha>\nconfig <sha>\n"``); None where nothing can be
    found to hash."""
    from ..registry import MODELS, sha256_of_url

    name = os.fspath(model)
    if name in MODELS:
        return {"name": name, "sha256": sha256_of_url(MODELS[name])}
    try:
        from ..formats import locate
    except ImportError:  # a copy without the layout modules: the file itself
        return {"name": name, "sha256": _file_sha256(Path(name)) if os.path.isfile(name) else None}
    try:
        found = locate(name)
    except FileNotFoundError:
        return {"name": name, "sha256": None}  # load names the problem
    weights = _file_sha256(Path(found.path))
    if not found.config:
        return {"name": name, "sha256": weights}
    import hashlib

    both = f"weights {weights}\nconfig {_file_sha256(Path(found.config))}\n"
    return {"name": name, "sha256": hashlib.sha256(both.encode()).hexdigest()}


def _file_sha256(path: Path) -> str:
    """The file's SHA-256; large files get clipfast's verified-cache record (``<file>.verified``,
    or under ``$XDG_CACHE_HOME/clipfast`` where the folder is read-only), so that a rerun of the job
    does not hash them again (the record holds while the size and modification time do)."""
    from .. import cache

    record = cache.read_record(path)
    if record is not None and cache.is_verified(path, record.sha256):
        return record.sha256
    before = path.stat()
    digest = cache.hash_file(path)
    after = path.stat()
    unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
    if unchanged and before.st_size >= _RECORD_FROM:
        cache.write_record(path, digest, before)
    return digest


#: Files smaller than this are hashed every time (a few ms) rather than given a record beside them.
_RECORD_FROM = 64 * 2**20
