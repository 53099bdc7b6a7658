"""Writing checkpoints in OpenAI's published format (the ``.pt`` files of the nine official models).

OpenAI made its files this way, and so does this module: the CLIP model with its weights converted
to fp16 (``convert_weights``), three buffers the archives carry where the Python class has plain
integers (``input_resolution``, ``context_length``, ``vocab_size``), ``torch.jit.trace`` of
``forward`` / ``encode_image`` / ``encode_text`` in fp16, and every ``cpu`` device constant turned
into ``cuda:0``, as in files traced on a GPU.

No real weights can be downloaded where clipfast is built, so the weights are random. The model
class is the caller's: the demo uses clipfast's own (``clipfast.model``, so it needs no other
package); the tests use openai/CLIP's (``clipfast._testing``), so that the files clipfast reads in
its tests were not made by clipfast's code. The archives differ only in the module path recorded
with each class (``__torch__.clipfast.model.CLIP`` or ``__torch__.clip.model.CLIP``), which no
loader reads.

Private: used by ``python -m clipfast.demo`` and the tests; not part of the public API.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    import torch

__all__ = ["FULL", "ModelSpec", "random_model", "save_archive", "spec"]


@dataclass(frozen=True)
class ModelSpec:
    """The arguments of ``clip.model.CLIP`` (text heads are ``transformer_width // 64`` there)."""

    embed_dim: int
    image_resolution: int
    vision_layers: Union[int, tuple[int, int, int, int]]
    vision_width: int
    vision_patch_size: Optional[int]
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int


def _vit(embed: int, res: int, layers: int, width: int, patch: int, tw: int) -> ModelSpec:
    return ModelSpec(embed, res, layers, width, patch, 77, 49408, tw, tw // 64, 12)


def _rn(embed: int, res: int, layers: tuple[int, int, int, int], width: int, tw: int) -> ModelSpec:
    return ModelSpec(embed, res, layers, width, None, 77, 49408, tw, tw // 64, 12)


# The nine official models' hyperparameters.
FULL: dict[str, ModelSpec] = {
    "RN50": _rn(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _rn(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _rn(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _rn(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _rn(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, 512),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, 512),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, 768),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, 768),
}


def spec(name: str) -> ModelSpec:
    """The full-size hyperparameters of an official model."""
    return FULL[name]


def random_model(s: ModelSpec, seed: int = 0, model_module: Optional[ModuleType] = None) -> Any:
    """``model_module.CLIP`` with random weights, converted to fp16 by ``model_module.convert_weights``
    as OpenAI's files are (``model_module`` is ``clipfast.model`` unless given, e.g. ``clip.model``).

    The random init is perturbed so that no parameter is a constant (LayerNorm ones, zero biases):
    a weight that goes to the wrong place must show."""
    import torch

    from . import model as clipfast_model

    module: ModuleType = clipfast_model if model_module is None else model_module
    torch.manual_seed(seed)
    model = module.CLIP(**asdict(s))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        model.logit_scale.fill_(4.6052)  # ln(100), as in the released models
    module.convert_weights(model)
    return model.eval()


def _example_inputs(s: ModelSpec, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    gen = torch.Generator().manual_seed(1234)
    image = torch.randn(1, 3, s.image_resolution, s.image_resolution, generator=gen).to(dtype)
    text = torch.randint(1, s.vocab_size - 1, (1, s.context_length), generator=gen)
    text[:, -1] = s.vocab_size - 1  # argmax picks the end-of-text position
    return image, text


def _cuda_device_constant() -> Any:
    import torch

    @torch.jit.script
    def _cuda() -> torch.device:
        return torch.device("cuda:0")

    constants = _cuda.graph.findAllNodes("prim::Constant")  # type: ignore[attr-defined]
    return next(n for n in constants if "cuda" in repr(n))


def save_archive(model: Any, s: ModelSpec, path: Union[str, os.PathLike[str]]) -> Path:
    """Write ``model`` (from :func:`random_model`, of spec ``s``) as OpenAI's TorchScript archives
    are written; returns the path. ``model`` gains the three buffers of OpenAI's archives."""
    import torch

    from .jit import _is_device_constant, graphs

    for key, value in (
        ("input_resolution", s.image_resolution),
        ("context_length", s.context_length),
        ("vocab_size", s.vocab_size),
    ):
        if hasattr(model, key):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    image, text = _example_inputs(s, torch.float16)
    with torch.no_grad():
        traced = torch.jit.trace_module(
            model,
            {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)},
            check_trace=False,
        )
    cuda = _cuda_device_constant()
    # Every compiled method of every submodule (forward, forward1, ... one per traced entry point).
    for graph in graphs(traced):
        for node in graph.findAllNodes("prim::Constant"):
            if _is_device_constant(node) and str(node.output().toIValue()) == "cpu":
                node.copyAttributes(cuda)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out))
    return out
