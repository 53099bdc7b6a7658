"""``jit=True``: OpenAI's TorchScript archives, patched to run on the requested device.

OpenAI traced its models on a GPU in fp16, so their graphs hold ``cuda:0`` device constants
(``torch.arange(..., device="cuda:0")``, ...) and ``aten::to(x, 5)`` casts to half. This module
loads the archive to the requested device with ``torch.jit.load`` and rewrites those constants in every method
graph of every submodule (``forward``, ``forward1``, ``encode_image``, ``encode_text``, ...):

- each device constant that names ``cuda`` becomes the requested device;
- on a CPU device (``"cpu"``, ``"cpu:0"``, ``torch.device("cpu")``: any device of type cpu) the
  half dtype argument of each ``aten::to`` becomes float, and the module is made float, since
  the CPU has no fast half kernels (openai/CLIP applies this only to the exact string ``"cpu"``).

Unlike openai/CLIP, which overwrites the attribute of the pooled constant node (shared by every
use of the integer 5 in the graph), the dtype fix gives each cast its own new constant, so no
other use of that integer changes.

Security: like ``torch.jit.load``, this runs the TorchScript code stored in the file. It is not
the safe path: use it only with files you trust (clipfast's default, ``jit=False``, never runs
code from a checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch

__all__ = ["cuda_constants", "device_constants", "graphs", "load_jit", "patch_device", "patch_half_to_float"]

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


def load_jit(
    path: Union[str, os.PathLike[str]], device: Union[str, torch.device, int, None] = None
) -> torch.jit.ScriptModule:
    """Load an OpenAI TorchScript archive for ``device`` (cuda when available, else cpu), patched.

    Runs the TorchScript code in the file, as ``torch.jit.load`` does: use trusted files only.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    # Tensors that are plain attributes (the text transformer's attention mask) are not moved by
    # ``.to()``: map them to the device at load time, as openai/CLIP does.
    location = torch.device("cpu") if target.type == "cpu" else target
    model = torch.jit.load(os.fspath(path), map_location=location).eval()
    patch_device(model, target)
    if target.type == "cpu":
        patch_half_to_float(model)
        model.float()
    else:
        model.to(target)
    return model
