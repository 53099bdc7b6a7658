"""``jit=True``: OpenAI's TorchScript archives, patched to run on the requested device.

OpenAI traced its models on a GPU in fp16, so their graphs hold ``cuda:0`` device constants
(``torch.arange(..., device="cuda:0")``, ...) and ``aten::to(x, 5)`` casts to half. This module
loads the archive to the requested device with ``torch.jit.load`` and rewrites those constants in every method
graph of every submodule (``forward``, ``forward1``, ``encode_image``, ``encode_text``, ...):

- each device constant that names ``cuda`` becomes the requested device;
- on a CPU device (``"cpu"``, ``"cpu:0"``, ``torch.device("cpu")``: any device of type cpu) the
  half dtype argument of each ``aten::to`` becomes float, and the module is made float, since
  the CPU has no fast half kernels (openai/CLIP applies this only to the exact string ``"cpu"``).

``dtype`` overrides that choice with one of the two precisions the graphs can run in: float32 (the
casts patched, on any device) or float16 (the archive as traced, on any device, the CPU included).
Any other dtype would need every dtype the trace fixed rewritten (casts, ``zeros(dtype=...)``, the
layer norms' fp32 casts), so it is refused with ``UnsupportedDtypeError`` rather than ignored.

Unlike openai/CLIP, which overwrites the attribute of the pooled constant node (shared by every
use of the integer 5 in the graph), the dtype fix gives each cast its own new constant, so no
other use of that integer changes.

Security: like ``torch.jit.load``, this runs the TorchScript code stored in the file. It is not
the safe path: use it only with files you trust (clipfast's default, ``jit=False``, never runs
code from a checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Union

from .errors import UnsupportedDtypeError

if TYPE_CHECKING:
    import torch

__all__ = [
    "cuda_constants",
    "device_constants",
    "graphs",
    "keeps_half",
    "load_jit",
    "patch_device",
    "patch_half_to_float",
]

_HALF = 5  # c10::ScalarType::Half
_FLOAT = 6  # c10::ScalarType::Float


# torch._C.Graph / Node are typed loosely here: torch's stubs lack most of their methods.
Graph = Any
Node = Any


def graphs(module: torch.jit.ScriptModule) -> Iterator[Graph]:
    """The graph of every compiled method of ``module`` and of all its submodules."""
    for sub in module.modules():
        compiled = getattr(sub, "_c", None)
        if compiled is None:
            continue
        for name in compiled._method_names():
            yield compiled._get_method(name).graph


def _constant_template(value: object) -> tuple[Graph, Node]:
    """A ``prim::Constant`` node holding ``value``, to copy attributes from, with its graph
    (the node is only valid while that graph lives)."""
    import torch

    holder: Graph = torch._C.Graph()
    return holder, holder.insertConstant(value).node()


def _is_device_constant(node: Node) -> bool:
    return node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType"


def device_constants(module: torch.jit.ScriptModule) -> list[str]:
    """The device named by every device constant in any graph of ``module``."""
    return [
        str(node.output().toIValue())
        for graph in graphs(module)
        for node in graph.findAllNodes("prim::Constant")
        if _is_device_constant(node)
    ]


def cuda_constants(module: torch.jit.ScriptModule) -> list[str]:
    """The device constants naming cuda left in any graph of ``module`` (empty when patched)."""
    return [device for device in device_constants(module) if device.startswith("cuda")]


def patch_device(module: torch.jit.ScriptModule, device: torch.device) -> int:
    """Point every ``cuda`` device constant of every graph at ``device``; returns how many changed."""
    _holder, template = _constant_template(device)
    changed = 0
    for graph in graphs(module):
        for node in graph.findAllNodes("prim::Constant"):
            if _is_device_constant(node) and str(node.output().toIValue()).startswith("cuda"):
                node.copyAttributes(template)
                changed += 1
    return changed


def _half_dtype_inputs(node: Node) -> list[int]:
    """Positions of the dtype argument of an ``aten::to`` that is the constant half."""
    positions = []
    inputs = list(node.inputs())
    # The dtype is argument 1 in to(Tensor, dtype, ...) and 2 in to(Tensor, Device, dtype, ...).
    for position in (1, 2):
        if position >= len(inputs):
            break
        value = inputs[position]
        producer = value.node()
        if (
            producer.kind() == "prim::Constant"
            and value.type().kind() == "IntType"
            and producer.output().toIValue() == _HALF
        ):
            positions.append(position)
    return positions


def _has_half_casts(module: torch.jit.ScriptModule) -> bool:
    return any(
        _half_dtype_inputs(node) for graph in graphs(module) for node in graph.findAllNodes("aten::to")
    )


def patch_half_to_float(module: torch.jit.ScriptModule) -> int:
    """Make every ``aten::to`` cast to half in every graph cast to float; returns how many changed."""
    _holder, template = _constant_template(_FLOAT)
    changed = 0
    for graph in graphs(module):
        for node in graph.findAllNodes("aten::to"):
            for position in _half_dtype_inputs(node):
                constant = graph.create("prim::Constant")
                constant.copyAttributes(template)
                constant.output().setType(template.output().type())
                constant.insertBefore(node)
                node.replaceInput(position, constant.output())
                changed += 1
    return changed


def keeps_half(path: str, target: torch.device, dtype: object) -> bool:
    """Whether the archive keeps its fp16 casts and layout (else: patched to float32), for
    ``dtype`` (None: float32 on the CPU only, as openai/CLIP); any other dtype is refused."""
    import torch

    if dtype is None:
        return target.type != "cpu"
    if dtype is torch.float16 or dtype is torch.float32:
        return dtype is torch.float16
    what = f"dtype={dtype}" if isinstance(dtype, torch.dtype) else f"a dtype plan ({dtype!r})"
    raise UnsupportedDtypeError(
        f"{path}: jit=True cannot give {what}: the TorchScript graphs fix the dtype of each cast "
        "(traced in float16; clipfast can turn those casts into float32, nothing else). Use "
        "dtype=torch.float16 or torch.float32 with jit=True, or jit=False for any dtype"
    )


def load_jit(
    path: Union[str, os.PathLike[str]],
    device: Union[str, torch.device, int, None] = None,
    dtype: Union[torch.dtype, Callable[[str, torch.dtype], torch.dtype], None] = None,
) -> torch.jit.ScriptModule:
    """Load an OpenAI TorchScript archive for ``device`` (cuda when available, else cpu), patched.

    ``dtype``: None gives float32 on any CPU device and the archive's fp16 layout elsewhere (as
    openai/CLIP); ``torch.float32`` float32 on any device; ``torch.float16`` the archive as traced
    (OpenAI's fp16 layout) on any device. Any other value raises ``UnsupportedDtypeError`` before
    the file is loaded; float16 raises it too for an archive traced without half casts.

    Runs the TorchScript code in the file, as ``torch.jit.load`` does: use trusted files only.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    half = keeps_half(os.fspath(path), target, dtype)
    # Tensors that are plain attributes (the text transformer's attention mask) are not moved by
    # ``.to()``: map them to the device at load time, as openai/CLIP does.
    location = torch.device("cpu") if target.type == "cpu" else target
    model = torch.jit.load(os.fspath(path), map_location=location).eval()
    patch_device(model, target)
    if not half:
        patch_half_to_float(model)
        model.float()
    elif dtype is not None and not _has_half_casts(model):
        raise UnsupportedDtypeError(
            f"{os.fspath(path)}: jit=True cannot give dtype={dtype}: this archive was traced without "
            "casts to float16 (not OpenAI's fp16 layout); use jit=False"
        )
    model.to(target)
    return model
