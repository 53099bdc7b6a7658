"""``clipfast.load``: openai/CLIP's ``clip.load``, many times faster and in less memory.

resolve (name -> a ``formats.ModelSource``: the weights file and the settings travelling with it)
-> read (Rust: mmap, zip, restricted unpickler, one dtype conversion in parallel) -> infer the
architecture from shapes and those settings -> build on ``meta`` -> assign the tensors -> place.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, TypeVar, Union

import torch

from . import limits
from .checkpoint import ParseAhead
from .registry import MODELS

if TYPE_CHECKING:
    from .arch import Architecture
    from .formats import ModelSource
    from .model import CLIP
    from .transforms import Compose

__all__ = ["DtypePlan", "dtype_plan", "load"]

# (state-dict key, stored dtype) -> the dtype the tensor gets; called for floating tensors only.
DtypePlan = Callable[[str, torch.dtype], torch.dtype]
DeviceLike = Union[str, torch.device, int]
DtypeLike = Union[torch.dtype, DtypePlan, None]


def _local_path(name: Union[str, os.PathLike[str]], download_root: Optional[str], verify: bool) -> str:
    """The file (downloaded and verified) of an official model's name, else ``name`` as a path, for
    ``formats.locate`` to find what it holds (a checkpoint file, an open_clip or Hugging Face
    folder, ``local-dir:``, ``hf-hub:``)."""
    if isinstance(name, str) and name in MODELS:
        from .download import resolve_model

        return resolve_model(name, download_root, verify=verify)
    return os.fspath(name)


class _Hints(NamedTuple):
    """What decides the settings no shape shows: the caller's arguments, then the source's."""

    vision_heads: Optional[int]
    transformer_heads: Optional[int]
    quick_gelu: Optional[bool]
    source: ModelSource


def _uniform(dtype: torch.dtype) -> DtypePlan:
    def plan(name: str, stored: torch.dtype) -> torch.dtype:
        return dtype

    return plan


def _clip_half_layout(half: frozenset[str], half_dtype: torch.dtype) -> DtypePlan:
    def plan(name: str, stored: torch.dtype) -> torch.dtype:
        return half_dtype if name in half else torch.float32

    return plan


def dtype_plan(device: DeviceLike, dtype: DtypeLike, half_names: frozenset[str]) -> DtypePlan:
    """The dtype each floating tensor gets, for ``load(..., device=device, dtype=dtype)``.

    - ``dtype=None``: fp32 on every CPU device; elsewhere openai/CLIP's layout: fp16 for the tensors
      ``convert_weights`` converts (``half_names``), fp32 for the rest, whatever the file stores.
    - ``torch.float32`` / ``torch.float64``: every floating tensor in that dtype.
    - ``torch.float16`` / ``torch.bfloat16``: openai/CLIP's layout with that half type.
    - a callable ``(name, stored_dtype) -> dtype``: used as given."""
    if dtype is None:
        if torch.device(device).type == "cpu":
            return _uniform(torch.float32)
        return _clip_half_layout(half_names, torch.float16)
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float16, torch.bfloat16):
            return _clip_half_layout(half_names, dtype)
        if dtype.is_floating_point:
            return _uniform(dtype)
        raise ValueError(f"dtype={dtype} is not a floating dtype")
    if callable(dtype):
        return dtype
    raise TypeError(f"dtype must be None, a torch.dtype or a callable (name, dtype) -> dtype, not {dtype!r}")


def _uniform_dtype(device: DeviceLike, dtype: DtypeLike) -> Optional[torch.dtype]:
    """The single dtype of every floating tensor when the plan does not depend on the architecture."""
    if dtype is None and torch.device(device).type == "cpu":
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype not in (torch.float16, torch.bfloat16):
        return dtype if dtype.is_floating_point else None
    return None


def _values_there() -> None:
    """The ``ready`` of tensors whose values are all read already."""


def _place(
    tensors: OrderedDict[str, torch.Tensor],
    plan: Optional[DtypePlan],
    device: torch.device,
    ready: Callable[[], None] = _values_there,
) -> None:
    """Give every tensor its final device and dtype, in place, contiguous as openai/CLIP's are.
    ``ready()`` is called before the first step that reads a tensor's values (a copy).

    Off the CPU the stored bytes are copied to the device first and converted there."""
    for key, tensor in tensors.items():
        if type(tensor) is not torch.Tensor and isinstance(tensor, torch.nn.Parameter):
            # A Parameter from the file would keep its own requires_grad; clip's are all trainable.
            tensor = tensor.detach()
        dtype = plan(key, tensor.dtype) if plan is not None and tensor.is_floating_point() else tensor.dtype
        if tensor.device != device or tensor.dtype != dtype or not tensor.is_contiguous():
            ready()
            if tensor.device != device:
                tensor = tensor.to(device=device)
            if tensor.dtype != dtype:
                tensor = tensor.to(dtype=dtype)
            tensor = tensor.contiguous()
        tensors[key] = tensor
    _unalias(tensors, ready)


def _unalias(tensors: OrderedDict[str, torch.Tensor], ready: Callable[[], None] = _values_there) -> None:
    """Copy each tensor whose memory overlaps another's, in place: a file may store one tensor under
    two names (or overlapping views of one storage), which the read keeps shared, and assigning them
    would make two parameters of one memory (updating one changes the other), where clip's
    ``load_state_dict`` copies each. Disjoint views of one storage stay as they are."""
    spans = sorted(
        (tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size(), key)
        for key, tensor in tensors.items()
        if tensor.numel() and tensor.device.type != "meta"
    )
    reach = 0
    for start, end, key in spans:
        if start < reach:
            ready()
            tensors[key] = tensors[key].clone()
        else:
            reach = end


def load(
    name: Union[str, os.PathLike[str]],
    device: Optional[DeviceLike] = None,
    jit: bool = False,
    download_root: Optional[str] = None,
    *,
    verify: bool = False,
    dtype: DtypeLike = None,
    mmap: bool = False,
    vision_heads: Optional[int] = None,
    transformer_heads: Optional[int] = None,
    weights_only: bool = True,
    quick_gelu: Optional[bool] = None,
) -> tuple[Any, Compose]:
    """Load a CLIP model; the same arguments and results as openai/CLIP's ``clip.load``.

    ``name`` is one of ``available_models()`` (downloaded to ``download_root``, by default
    ``~/.cache/clip``), the path of a checkpoint (an OpenAI TorchScript archive, a ``torch.save``d
    state dict, also a training checkpoint's, under ``"state_dict"`` or ``"model"``, keys
    optionally prefixed with DataParallel's ``module.``, or a ``.safetensors`` file), or of a model
    folder (open_clip's, with ``open_clip_config.json``; Hugging Face's), also as
    ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.
    Returns ``(model, preprocess)``: the model in eval mode on ``device`` (default: CUDA when
    available, else CPU), and the preprocess for its input resolution (the configuration's, where
    one travels with the weights). ``jit=True`` returns OpenAI's TorchScript module instead, patched
    for ``device`` (``clipfast.jit.load_jit``); a file that is not a TorchScript archive gives a
    warning and the eager model, as in clip.

    Differences from clip.load: every CPU device (``"cpu"``, ``"cpu:0"``, ``torch.device("cpu")``)
    gives fp32 weights (clip only does so for the exact string ``"cpu"``); ``dtype`` chooses the
    weights' dtypes (see ``dtype_plan``; with ``jit=True`` only ``torch.float16`` or ``torch.float32``,
    else ``UnsupportedDtypeError``: see ``jit.load_jit``); ``verify=True`` re-hashes a cached official file;
    ``mmap=True`` leaves tensors whose dtype does not change backed by a copy-on-write map of the
    file (faster, less memory; the file must not be truncated or rewritten in place while the model
    lives: replacing it with a new file is safe);
    ``quick_gelu`` (True: QuickGELU, False: GELU, in both towers), ``vision_heads`` and
    ``transformer_heads`` decide what no shape shows, before the configuration travelling with the
    weights, the TorchScript archive (OpenAI's: QuickGELU, 64-wide heads), open_clip's published
    configurations (head widths) and defaults (64-wide heads, QuickGELU: with a warning naming
    these arguments).
    No pickle code is ever run, unless ``jit=True`` (TorchScript is loaded by torch itself) or
    ``weights_only=False``: then ``torch.load(weights_only=False)`` reads the file, which **runs
    any code its pickle names** (only for files you trust, whose weights sit inside objects of
    their own classes that clipfast refuses to rebuild); the model is made from its state dict.
    (Hugging Face folders, whose files hold plain tensors under other names, are always read by
    clipfast's own reader.)

    Raises ``ModelNotFoundError`` (a RuntimeError, as in clip), ``CheckpointError`` /
    ``UnsafeCheckpointError`` for damaged or unsafe files, ``ArchitectureError`` when the tensors do
    not describe a CLIP model; a failed load returns nothing half-built."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is not None:
        dtype_plan(device, dtype, frozenset())  # a wrong dtype fails before any download or read
        if jit and isinstance(name, str) and name in MODELS:
            from .jit import keeps_half

            keeps_half(name, torch.device(device), dtype)  # official files are TorchScript archives
    local = _local_path(name, download_root, verify)
    # A checkpoint file's parse starts now, beside locating the source and the imports below, where
    # clipfast's own reader will read it on the CPU (not for jit=True, torch.load or a GPU load).
    reads_on_cpu = not jit and weights_only and torch.device(device).type == "cpu"
    ahead = ParseAhead.start(local) if reads_on_cpu else None
    # Imported once the parse has started (they take ~3 ms, which the parse's thread overlaps).
    from .arch import warn_assumptions
    from .formats import locate

    source = locate(local)
    path = source.path

    if jit:
        from .formats.openai import is_torchscript

        if is_torchscript(path):
            from .jit import load_jit
            from .transforms import for_resolution

            scripted = load_jit(
                path,
                device if isinstance(device, (str, torch.device)) else torch.device(device),
                dtype=dtype,  # float16 / float32 only: the graphs fix their casts (else a typed error)
            )
            return scripted, for_resolution(int(scripted.input_resolution.item()))
        warnings.warn(f"File {path} is not a JIT archive. Loading as a state dict instead", stacklevel=2)

    hints = _Hints(vision_heads, transformer_heads, quick_gelu, source)
    model, arch = _load_eager(source, device, dtype, mmap, hints, weights_only, ahead)
    from .transforms import for_config, for_resolution

    warn_assumptions(arch, path, stacklevel=2, unused_config=source.unused_config)
    n_px = model.visual.input_resolution
    return model, (for_config(source.preprocess, n_px) if source.preprocess else for_resolution(n_px))


def _load_eager(
    source: ModelSource,
    device: DeviceLike,
    dtype: DtypeLike,
    mmap: bool,
    heads: _Hints,
    weights_only: bool,
    ahead: Optional[ParseAhead] = None,
) -> tuple[CLIP, Architecture]:
    from .checkpoint import read_state_dict
    from .model import half_precision_names

    path = source.path

    target = torch.device(device)
    on_cpu = target.type == "cpu"
    if on_cpu:
        target = torch.device("cpu")  # "cpu:0" is the same memory; comparing it would copy every tensor
    uniform = _uniform_dtype(target, dtype)
    direct: Union[torch.dtype, DtypePlan, None] = uniform
    if direct is None and callable(dtype) and not isinstance(dtype, torch.dtype):
        direct = _model_names(dtype)  # the caller's own plan needs no knowledge of the architecture
    plan: Optional[DtypePlan] = None
    if not weights_only and source.direct:
        tensors = _torch_loaded_state_dict(path)
        model, arch = _build(tensors, path, heads)
        plan = dtype_plan(target, dtype, half_precision_names(model))
    elif not source.direct and on_cpu and uniform is not None:
        # A layout with other key names (Hugging Face): the source maps them while it reads, on a
        # second thread (its conversion is Rust, GIL released), while this one builds the model.
        # The read allocates before _build's own check of the declared shapes runs: check first.
        shapes = source.declared_shapes()
        limits.check(path, limits.declared_bytes(shapes), "the tensors it declares (as float32)")
        tensors, (model, arch) = _build_beside(
            lambda: source.read(mmap=mmap, dtype=uniform), shapes, path, heads
        )
    elif not source.direct:
        model, arch = _build(source.declared_shapes(), path, heads)
        plan = dtype_plan(target, dtype, half_precision_names(model))
        tensors = source.read(mmap=mmap or not on_cpu, dtype=plan if on_cpu else None)
    elif on_cpu and direct is not None:
        # The common case: one read, converted once on Rust threads while this thread builds the
        # model from the shapes the file declares and gives it the tensors being filled.
        return _read_while_building(path, mmap, direct, heads, ahead)
    elif on_cpu:
        # The plan depends on which tensors are conv/linear/attention weights: build the model
        # from the declared shapes first, then read once, converting as planned (one parse serves
        # both: the one started ahead where there is one).
        from .checkpoint import _declared_shapes, _parsed, _read_parsed

        reader = _parsed(path, ahead)
        model, arch = _build(_declared_shapes(reader.tensors), path, heads)
        names = _model_names(dtype_plan(target, dtype, half_precision_names(model)))
        tensors = _read_parsed(reader, mmap=mmap, dtype=names)
    else:
        # Each tensor is copied once, from a map of the file to the device, and converted there.
        tensors = read_state_dict(path, mmap=True)
        model, arch = _build(tensors, path, heads)
        plan = dtype_plan(target, dtype, half_precision_names(model))
    return _into_model(tensors, model, path, plan, target), arch


def _into_model(
    tensors: OrderedDict[str, torch.Tensor],
    model: CLIP,
    path: str,
    plan: Optional[DtypePlan],
    target: torch.device,
    ready: Callable[[], None] = _values_there,
) -> CLIP:
    """The meta ``model`` with ``tensors`` (as read, under the file's names) fitted, placed and
    made its own. Only a resize or a copy reads values, after ``ready()``: the rest may run while
    the tensors are still being filled."""
    from .arch import without_wrapper_prefix
    from .model import assign_state_dict

    tensors = without_wrapper_prefix(tensors)
    _fit(tensors, model, path, ready)
    _place(tensors, plan, target, ready)
    return assign_state_dict(model, tensors, source=path)


def _fit(
    tensors: OrderedDict[str, torch.Tensor], model: CLIP, path: str, ready: Callable[[], None] = _values_there
) -> None:
    """open_clip's fixes that keep the values: a 1-element logit_scale becomes the scalar the model
    has, and position embeddings are resized where the configuration's image size or context length
    is not the weights' (as open_clip's load_checkpoint does; in the stored dtype where the read
    converted them, which gives open_clip's values, the conversion being exact). A resize reads
    values: ``ready()`` comes first."""
    scale = tensors.get("logit_scale")
    if scale is not None and scale.ndim == 1 and scale.numel() == 1:
        tensors["logit_scale"] = scale.reshape(())
    from .posembed import fit_position_embeddings

    def stored_dtype(key: str) -> torch.dtype:
        ready()  # called only for a resize, before it
        from .arch import openai_key_names
        from .checkpoint import inspect_checkpoint

        try:
            entries = inspect_checkpoint(path).tensors
        except (ValueError, OSError):  # read by torch.load (weights_only=False): keep the dtype read
            return tensors[key].dtype
        names = openai_key_names([t.name for t in entries])
        stored = {names[t.name]: t.dtype for t in entries}
        return getattr(torch, stored[key]) if key in stored else tensors[key].dtype

    fit_position_embeddings(tensors, model, stored_dtype, source=path)


def _torch_loaded_state_dict(path: str) -> OrderedDict[str, torch.Tensor]:
    """The tensors of ``torch.load(path, weights_only=False)`` (this runs the file's pickle code):
    a module's state dict, or the mapping of tensors at the top or under "state_dict" / "model"."""
    from .errors import CheckpointError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notice that it hands TorchScript to torch.jit.load
            loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # anything the file's own pickle raises, too
        raise CheckpointError(f"{path}: torch.load failed: {type(err).__name__}: {err}") from err
    state: Any = loaded.state_dict() if isinstance(loaded, torch.nn.Module) else loaded
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, Mapping):
                state = inner
                break
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    tensors = OrderedDict(
        (k, v) for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    )
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (at the top level or under 'state_dict' / 'model')")
    return tensors


def _model_names(plan: DtypePlan) -> DtypePlan:
    """``plan``, called with the model's key names where the file's keys carry the wrapper prefix or
    open_clip's CustomTextCLIP ``text.`` (a file with only some keys prefixed is not a CLIP
    checkpoint and fails in the build)."""

    from .arch import CUSTOM_TEXT_KEYS, WRAPPER_PREFIX

    def named(name: str, stored: torch.dtype) -> torch.dtype:
        name = name.removeprefix(WRAPPER_PREFIX)
        if name.startswith("text.") and name[5:].startswith(CUSTOM_TEXT_KEYS):
            name = name[5:]
        return plan(name, stored)

    return named


def _build(tensors: Mapping[str, Any], path: str, heads: _Hints) -> tuple[CLIP, Architecture]:
    """The meta-device model for the shapes of ``tensors`` (a mapping of names to objects with
    ``.shape``; keys may carry DataParallel's ``module.`` prefix) and the settings in ``heads``."""
    from .arch import infer_architecture, without_wrapper_prefix
    from .model import construct_on_meta

    arch = infer_architecture(
        without_wrapper_prefix(tensors),
        vision_heads=heads.vision_heads,
        transformer_heads=heads.transformer_heads,
        quick_gelu=heads.quick_gelu,
        decided=heads.source.decided,
        source=path,
    )
    # Before anything is allocated for the model: the shapes must fit the file (limits.py). The
    # attention mask is the one tensor the model allocates while it is built; the image position
    # embedding is the one whose size a configuration sets apart from the weights (an image size
    # of 10**30 would otherwise reach torch, even on the meta device, as an overflow TypeError).
    width = arch.vision_width if arch.is_vit else arch.vision_width * 32
    needed = (
        limits.declared_bytes(tensors) + 4 * arch.context_length**2 + 4 * (arch.vision_grid**2 + 1) * width
    )
    limits.check(
        path,
        needed,
        "the tensors it declares (as float32), the text attention mask and the image position embedding",
    )
    model = construct_on_meta(arch)
    limits.check(path, _meta_bytes(model), "the model it describes (as float32)")
    return model, arch


def _meta_bytes(model: torch.nn.Module) -> int:
    """The float32 size of a model built on ``meta`` (its parameters and buffers)."""
    tensors = [*model.parameters(), *model.buffers()]
    return 4 * sum(t.numel() for t in tensors)


def _read_while_building(
    path: str, mmap: bool, dtype: Union[torch.dtype, DtypePlan], heads: _Hints, ahead: Optional[ParseAhead]
) -> tuple[CLIP, Architecture]:
    """Convert the file's tensors on Rust threads while this one builds the meta model, makes the
    tensors (views of the memory being filled) and gives them to the model; then wait.

    The conversion needs no GIL, so the Python work here runs beside it rather than before or
    after it. Errors: a file that is not a readable checkpoint fails in the parse before any work
    starts; one that is not a CLIP model fails in the build, reported before a conversion error
    (the conversion is waited for all the same: it writes into memory the tensors own)."""
    from .checkpoint import _parsed, _plan_read

    if ahead is not None:
        # While the parse runs on its thread (GIL released), import what the build, the preprocess
        # and the assembly need, which would otherwise be imported after it, in the serial path.
        from . import posembed, published  # noqa: F401
    # What the load imports is imported before the conversion starts: an import (file reads, maps,
    # allocations) slowed by its page faults took several times its own time.
    from . import transforms  # noqa: F401  (PIL.Image waits for an image)
    from .model import construct_on_meta  # noqa: F401

    pending = _plan_read(path, mmap=mmap, dtype=dtype, reader=_parsed(path, ahead))
    pending.start()
    try:
        model, arch = _build(pending.declared_shapes(), path, heads)
        model = _into_model(pending.finish(), model, path, None, torch.device("cpu"), ready=pending.wait)
    except BaseException:
        pending.abandon()
        raise
    pending.wait()
    return model, arch


_T = TypeVar("_T")


def _build_beside(
    work: Callable[[], _T], shapes: Mapping[str, Any], path: str, heads: _Hints
) -> tuple[_T, tuple[CLIP, Architecture]]:
    """``work()`` on a second thread while this one runs ``_build(shapes, path, heads)``. Errors of
    either propagate, the build's first.

    What the load imports is imported before the work starts: an import (file reads, maps,
    allocations) slowed by the work's page faults took several times its own time."""
    import threading

    from . import transforms  # noqa: F401  (the preprocess returned; PIL.Image waits for an image)

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed over to the calling thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="clipfast-convert", daemon=True)
    worker.start()
    try:
        built = _build(shapes, path, heads)
    finally:
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], built
