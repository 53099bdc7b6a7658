"""Checkpoints in OpenAI's exact published formats, with random weights.

No real weights can be downloaded where clipfast is tested, so tests and benchmarks write their own
files the way OpenAI made theirs (``clipfast._openai_format``), from the reference model
(``clip.model.CLIP`` of the ``clip-anytorch`` package, which must be installed), so that what
clipfast reads in its tests was not made by clipfast's code.

Test support: needs the reference package; not part of the public API and not in the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ._openai_format import FULL, ModelSpec, random_model, save_archive, spec

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
    import clip.model

    return random_model(s, seed, clip.model)


def write_openai_archive(path: str | os.PathLike[str], s: ModelSpec, seed: int = 0) -> Path:
    """Write a TorchScript archive exactly as OpenAI's released ``.pt`` files are made; returns its path.

    With ``$CLIPFAST_ARCHIVE_PYTHON`` set, that interpreter (with a newer torch, clipfast and
    clip-anytorch) writes the file: the trace runs the model in fp16 on the CPU, which an older torch
    (2.1) cannot do for convolutions (``make compat`` sets it for such a torch). OpenAI's own files,
    too, were written by another torch than the one that reads them."""
    other = os.environ.get("CLIPFAST_ARCHIVE_PYTHON")
    if other:
        code = (
            "import json, sys; from clipfast import _testing; "
            "d = json.loads(sys.argv[2]); "
            "d['vision_layers'] = tuple(d['vision_layers']) if isinstance(d['vision_layers'], list) "
            "else d['vision_layers']; "
            "s = _testing.ModelSpec(**d); "
            "_testing.write_openai_archive(sys.argv[1], s, int(sys.argv[3]))"
        )
        env = {k: v for k, v in os.environ.items() if k != "CLIPFAST_ARCHIVE_PYTHON"}
        args = [str(path), json.dumps(asdict(s)), str(seed)]
        subprocess.run([other, "-c", code, *args], check=True, env=env)
        return Path(path)
    return save_archive(build_reference_model(s, seed), s, path)


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
