"""Checkpoints in OpenAI's exact published formats, with random weights.

No real weights can be downloaded where clipfast is tested, so tests, benchmarks and the demo write
their own files the way OpenAI made theirs: the reference model (``clip.model.CLIP`` from the
``clip-anytorch`` package, which must be installed), the three buffers OpenAI's archives carry,
``convert_weights`` (fp16), ``torch.jit.trace`` of ``forward``/``encode_image``/``encode_text`` in
fp16, and every ``cpu`` device constant turned into ``cuda:0`` as in files traced on a GPU.

Private: needs the reference package; not part of the public API.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .jit import _is_device_constant, graphs

__all__ = [
    "FULL",
    "HF_VIT_B_32",
    "HFSpec",
    "ModelSpec",
    "build_hf_model",
    "build_reference_model",
    "spec",
    "tiny",
    "write_hf_folder",
    "write_openai_archive",
    "write_state_dict",
]


@dataclass(frozen=True)
class ModelSpec:
    """The arguments of ``clip.model.CLIP`` (text heads are ``transformer_width // 64`` there)."""

    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, int, int, int]
    vision_width: int
    vision_patch_size: int | None
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


def tiny(name: str, *, text_layers: int = 2, vocab_size: int | None = None) -> ModelSpec:
    """A tiny-width variant of an official model: same structure (layer counts, patch size, resolution,
    context length), small widths, so that tests run in seconds on a CPU."""
    full = FULL[name]
    if full.vision_patch_size is None:  # ModifiedResNet: heads = width * 32 // 64
        vision_width = 8
    else:  # ViT: heads = width // 64
        vision_width = 64
    return replace(
        full,
        embed_dim=32,
        vision_width=vision_width,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=text_layers,
        vocab_size=full.vocab_size if vocab_size is None else vocab_size,
    )


def build_reference_model(s: ModelSpec, seed: int = 0) -> Any:
    """The reference ``clip.model.CLIP`` with random weights, converted to fp16 as OpenAI's files are.

    The random init is perturbed so that no parameter is a constant (LayerNorm ones, zero biases):
    tests must be able to notice a weight that went to the wrong place."""
    from clip.model import CLIP, convert_weights

    torch.manual_seed(seed)
    model = CLIP(**asdict(s))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        model.logit_scale.fill_(4.6052)  # ln(100), as in the released models
    convert_weights(model)
    return model.eval()


def _example_inputs(s: ModelSpec, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    image = torch.randn(1, 3, s.image_resolution, s.image_resolution, generator=gen).to(dtype)
    text = torch.randint(1, s.vocab_size - 1, (1, s.context_length), generator=gen)
    text[:, -1] = s.vocab_size - 1  # argmax picks the end-of-text position
    return image, text


def _cuda_device_constant() -> torch._C.Node:
    @torch.jit.script
    def _cuda() -> torch.device:
        return torch.device("cuda:0")

    constants = _cuda.graph.findAllNodes("prim::Constant")  # type: ignore[attr-defined]
    return next(n for n in constants if "cuda" in repr(n))


def write_openai_archive(path: str | os.PathLike[str], s: ModelSpec, seed: int = 0) -> Path:
    """Write a TorchScript archive exactly as OpenAI's released ``.pt`` files are made; returns its path."""
    model = build_reference_model(s, seed)
    # OpenAI's archives carry these as buffers, where the Python class has plain int attributes.
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


def write_state_dict(path: str | os.PathLike[str], s: ModelSpec, seed: int = 0) -> Path:
    """Write ``torch.save(model.state_dict())`` of the same fp16 model (what fine-tuners save)."""
    model = build_reference_model(s, seed)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return out


# --- Hugging Face CLIPModel folders --------------------------------------------------------------


@dataclass(frozen=True)
class HFSpec:
    """A transformers ``CLIPConfig``'s settings (small widths for tests; any head width HF allows)."""

    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_mlp: int = 256
    vision_act: str = "quick_gelu"
    patch_size: int = 16
    image_size: int = 64
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_mlp: int = 256
    text_act: str = "quick_gelu"
    vocab_size: int = 49408
    context_length: int = 77
    projection_dim: int = 32

    def config(self) -> Any:
        from transformers import CLIPConfig

        return CLIPConfig(
            text_config={
                "hidden_size": self.text_width,
                "intermediate_size": self.text_mlp,
                "num_hidden_layers": self.text_layers,
                "num_attention_heads": self.text_heads,
                "hidden_act": self.text_act,
                "vocab_size": self.vocab_size,
                "max_position_embeddings": self.context_length,
                "eos_token_id": self.vocab_size - 1,
            },
            vision_config={
                "hidden_size": self.vision_width,
                "intermediate_size": self.vision_mlp,
                "num_hidden_layers": self.vision_layers,
                "num_attention_heads": self.vision_heads,
                "hidden_act": self.vision_act,
                "patch_size": self.patch_size,
                "image_size": self.image_size,
            },
            projection_dim=self.projection_dim,
        )


#: transformers' ViT-B/32 (``openai/clip-vit-base-patch32``'s shapes), fp32.
HF_VIT_B_32 = HFSpec(768, 12, 12, 3072, "quick_gelu", 32, 224, 512, 12, 8, 2048, "quick_gelu", 49408, 77, 512)


def build_hf_model(s: HFSpec, seed: int = 0) -> Any:
    """A transformers ``CLIPModel`` with random weights (perturbed so that no parameter is constant)."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(s.config())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        model.logit_scale.fill_(4.6052)
    return model.eval()


def write_hf_folder(
    folder: str | os.PathLike[str],
    model: Any,
    *,
    weights: str = "safetensors",
    max_shard_size: str | int | None = None,
    preprocessor: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as ``save_pretrained`` writes it (``config.json``, ``model.safetensors``,
    sharded with ``max_shard_size``), or as older transformers did with ``weights="bin"``
    (``pytorch_model.bin``, or shards ``pytorch_model-0000i-of-0000n.bin`` with
    ``pytorch_model.bin.index.json``); ``preprocessor`` is written as ``preprocessor_config.json``
    (``CLIPImageProcessor(**preprocessor)``). Returns the folder."""
    import json

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if weights == "safetensors":
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(out, **kwargs)
    elif weights == "bin":
        model.config.save_pretrained(out)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if max_shard_size is None:
            torch.save(state, out / "pytorch_model.bin")
        else:
            names = list(state)
            count = int(max_shard_size)
            chunks = [names[i::count] for i in range(count)]
            weight_map = {}
            for i, chunk in enumerate(chunks):
                file = f"pytorch_model-{i + 1:05d}-of-{count:05d}.bin"
                torch.save({k: state[k] for k in chunk}, out / file)
                weight_map.update(dict.fromkeys(chunk, file))
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    else:
        raise ValueError(f"weights must be 'safetensors' or 'bin', not {weights!r}")
    if preprocessor is not None:
        from transformers import CLIPImageProcessor

        CLIPImageProcessor(**preprocessor).save_pretrained(out)
    return out
