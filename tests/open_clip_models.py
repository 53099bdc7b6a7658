"""open_clip models and folders with random weights, as open_clip itself makes and saves them.

The configurations are small (tests run in seconds on a CPU) but cover what published models vary:
GELU and QuickGELU, head widths 80 / 88 / 104 (ViT-H, g, bigG), MLP ratios that are not 4 (g, bigG,
e), a ModifiedResNet image tower, text towers of one and two heads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import torch

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}

CONFIGS: dict[str, dict[str, Any]] = {
    # ViT-H-like heads (80 wide), g-like MLP ratio, GELU (LAION's models).
    "gelu_h80": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 160,
            "head_width": 80,
            "patch_size": 8,
            "mlp_ratio": 4.3637,
        },
        "text_cfg": dict(TEXT),
    },
    # ViT-g-like heads (88 wide), QuickGELU (OpenAI / MetaCLIP / DFN), two text heads, MLP ratio 3.
    "quick_h88": {
        "embed_dim": 48,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 48,
            "layers": 2,
            "width": 176,
            "head_width": 88,
            "patch_size": 16,
            "mlp_ratio": 2.5,
        },
        "text_cfg": {**TEXT, "width": 128, "heads": 2, "mlp_ratio": 3.0},
    },
    # ViT-bigG-like heads (104 wide) and MLP ratio 4.9231 in both towers.
    "gelu_h104": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 208,
            "head_width": 104,
            "patch_size": 8,
            "mlp_ratio": 4.9231,
        },
        "text_cfg": {**TEXT, "mlp_ratio": 4.9231},
    },
    # A ModifiedResNet image tower (its attention pool's heads: width * 32 / head_width).
    "resnet": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
        "text_cfg": dict(TEXT),
    },
}


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its initial value (LayerNorm ones, zero biases), so that a weight
    in the wrong place shows; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


_MADE: dict[tuple[str, int, bool], torch.nn.Module] = {}


def open_clip_model(name_or_cfg: str | dict[str, Any], seed: int = 0, *, custom_text: bool = False) -> Any:
    """open_clip's ``CLIP`` (``CustomTextCLIP`` with ``custom_text``) of a configuration, random
    weights (a fresh copy each call; each distinct model is initialised once per session)."""
    import open_clip

    cfg = copy.deepcopy(CONFIGS[name_or_cfg] if isinstance(name_or_cfg, str) else name_or_cfg)
    cfg.pop("custom_text", None)
    key = (json.dumps(cfg, sort_keys=True), seed, custom_text)
    if key not in _MADE:
        torch.manual_seed(seed)
        cls = open_clip.model.CustomTextCLIP if custom_text else open_clip.model.CLIP
        _MADE[key] = perturb(cls(**cfg), seed)
    return copy.deepcopy(_MADE[key])


def write_folder(
    folder: Path,
    cfg: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    weights: str = "open_clip_model.safetensors",
    preprocess_cfg: Optional[dict[str, Any]] = None,
) -> Path:
    """An open_clip model folder: ``open_clip_config.json`` and the weights under ``weights``
    (safetensors, else ``torch.save``), as ``open_clip.push_to_hf_hub`` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save(folder / weights, state_dict)
    return folder


def save(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return path


def reference_load(folder: Path | str) -> tuple[Any, Any]:
    """open_clip's own load of a folder: (model, inference preprocess)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess


def inputs(
    n_px: int, context_length: int, batch: int = 2, seed: int = 7
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, n_px, n_px, generator=gen)
    text = torch.randint(1, 49405, (batch, context_length), generator=gen)
    text[0, 5] = 49407
    text[0, 6:] = 0
    text[1:, -1] = 49407
    return image, text


def assert_same_outputs(ours: Any, reference: Any, *, atol: float = 2e-5) -> None:
    """encode_image / encode_text of both models on the same inputs, fp32."""
    n_px = ours.visual.input_resolution
    image, text = inputs(n_px, ours.context_length)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_image(image), reference.encode_image(image), rtol=1e-5, atol=atol
        )
        torch.testing.assert_close(ours.encode_text(text), reference.encode_text(text), rtol=1e-5, atol=atol)


def assert_same_state(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(reference)
    for key, expected in reference.items():
        got = ours[key]
        assert got.shape == expected.shape and got.dtype == expected.dtype, key
        assert torch.equal(got, expected), key
