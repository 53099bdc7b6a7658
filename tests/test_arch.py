"""Architecture inference and the model's structure, against openai/CLIP's model on the meta device."""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

import pytest
import torch
from clipfast import _testing
from clipfast.arch import Architecture, infer_architecture
from clipfast.errors import ArchitectureError
from clipfast.load import dtype_plan
from clipfast.model import construct_on_meta, convert_weights, half_precision_names

ALL_MODELS = list(_testing.FULL)


def reference_on_meta(name: str, *, convert: bool = False) -> Any:
    """openai/CLIP's model of the official size, built on the meta device (no memory)."""
    import clip.model

    with torch.device("meta"):
        model = clip.model.CLIP(**asdict(_testing.spec(name)))
    if convert:
        clip.model.convert_weights(model)
    return model


def shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(t.shape)) for key, t in model.state_dict().items()]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_full_size_structure_matches_reference(name: str) -> None:
    reference = reference_on_meta(name)
    arch = infer_architecture(reference.state_dict())
    spec = _testing.spec(name)
    assert arch.clip_arguments() == asdict(spec)
    assert arch.is_vit == (spec.vision_patch_size is not None)
    ours = construct_on_meta(arch)
    assert shapes(ours) == shapes(reference)
    assert all(p.device.type == "meta" for p in ours.parameters())
    # The causal mask is a plain attribute: it must be real memory, equal to the reference's.
    import clip.model

    mask = ours.transformer.resblocks[0].attn_mask
    assert mask is not None and mask.device.type == "cpu"
    with torch.device("cpu"):  # the reference's own mask is on meta: rebuild it in memory
        expected = clip.model.CLIP.build_attention_mask(reference)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_half_precision_layout_matches_convert_weights(name: str) -> None:
    reference = reference_on_meta(name, convert=True)
    clip_half = {key for key, t in reference.state_dict().items() if t.dtype == torch.float16}
    ours = construct_on_meta(infer_architecture(reference.state_dict()))
    assert half_precision_names(ours) == clip_half
    convert_weights(ours)
    assert [(k, t.dtype) for k, t in ours.state_dict().items()] == [
        (k, t.dtype) for k, t in reference.state_dict().items()
    ]


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1), "mps", "xpu", 0])
@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_dtype_plan_off_cpu_is_clips(name: str, device: Any) -> None:
    """What clip.load gives on a GPU: convert_weights' fp16 tensors, fp32 for the rest, whatever is stored."""
    reference = reference_on_meta(name, convert=True)
    half = half_precision_names(construct_on_meta(infer_architecture(reference.state_dict())))
    plan = dtype_plan(device, None, half)
    for key, t in reference.state_dict().items():
        if t.is_floating_point():
            for stored in (torch.float16, torch.float32):
                assert plan(key, stored) == t.dtype, key


@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu"), torch.device("cpu", 0)])
def test_dtype_plan_on_every_cpu_device_is_fp32(device: Any) -> None:
    plan = dtype_plan(device, None, frozenset({"visual.proj"}))
    assert plan("visual.proj", torch.float16) == torch.float32
    assert plan("ln_final.weight", torch.float16) == torch.float32


def test_dtype_plan_overrides() -> None:
    half = frozenset({"visual.proj"})
    assert dtype_plan("cuda", torch.float32, half)("visual.proj", torch.float16) == torch.float32
    bf16 = dtype_plan("cpu", torch.bfloat16, half)
    assert bf16("visual.proj", torch.float16) == torch.bfloat16
    assert bf16("ln_final.weight", torch.float16) == torch.float32
    custom = dtype_plan("cuda", lambda name, stored: torch.float64, half)
    assert custom("ln_final.weight", torch.float16) == torch.float64
    with pytest.raises(ValueError):
        dtype_plan("cpu", torch.int8, half)
    with pytest.raises(TypeError):
        dtype_plan("cpu", "fp16", half)  # type: ignore[arg-type]


def test_architecture_is_frozen_and_printable() -> None:
    arch = infer_architecture(reference_on_meta("ViT-L/14@336px").state_dict())
    text = repr(arch)
    assert "image_resolution=336" in text and "vision_patch_size=14" in text and "vision_grid=24" in text
    assert arch.vision_heads == 16 and arch.transformer_heads == 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.embed_dim = 1  # type: ignore[misc]
    rn = infer_architecture(reference_on_meta("RN50x4").state_dict())
    assert rn.vision_layers == (4, 6, 10, 6) and rn.vision_heads == 80 * 32 // 64 and not rn.is_vit


def test_head_overrides() -> None:
    state = reference_on_meta("ViT-B/32").state_dict()
    arch = infer_architecture(state, vision_heads=8, transformer_heads=16)
    assert (arch.vision_heads, arch.transformer_heads) == (8, 16)
    model = construct_on_meta(arch)
    assert model.visual.transformer.resblocks[0].attn.num_heads == 8
    assert model.transformer.resblocks[0].attn.num_heads == 16
    with pytest.raises(ArchitectureError, match="transformer_heads=7"):
        infer_architecture(state, transformer_heads=7)
    rn = infer_architecture(reference_on_meta("RN50").state_dict(), vision_heads=16)
    assert construct_on_meta(rn).visual.attnpool.num_heads == 16


def _edited(name: str, **changes: Any) -> OrderedDict[str, Any]:
    state = OrderedDict(reference_on_meta(name).state_dict())
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("ViT-B/32", {"text_projection": None}, "'text_projection'"),
        ("ViT-B/32", {"visual__proj": torch.empty(768, 7, device="meta")}, "'visual.proj'"),
        ("ViT-B/32", {"visual__positional_embedding": torch.empty(48, 768)}, "grid"),
        ("ViT-B/32", {"visual__conv1__weight": torch.empty(768, 3, 32)}, "'visual.conv1.weight'"),
        ("ViT-B/32", {"ln_final__weight": torch.empty(256)}, "'ln_final.weight'"),
        ("RN50", {"visual__attnpool__positional_embedding": torch.empty(50, 1024)}, "attnpool"),
        ("RN50", {"visual__layer1__0__conv1__weight": None}, "visual.layer1.0.conv1.weight"),
        ("ViT-B/16", {"token_embedding__weight": "not a tensor"}, "'token_embedding.weight'"),
    ],
)
def test_inconsistent_shapes_name_the_key_and_file(name: str, edit: dict[str, Any], message: str) -> None:
    with pytest.raises(ArchitectureError, match=message) as info:
        infer_architecture(_edited(name, **edit), source="/some/file.pt")
    assert str(info.value).startswith("/some/file.pt: ")


def test_missing_block_is_named() -> None:
    state = OrderedDict(
        (k, v) for k, v in reference_on_meta("ViT-B/32").state_dict().items() if ".resblocks.3." not in k
    )
    with pytest.raises(ArchitectureError, match=r"resblocks\.3"):
        infer_architecture(state)


def test_no_visual_tensors() -> None:
    state = {k: v for k, v in reference_on_meta("RN50").state_dict().items() if not k.startswith("visual.")}
    with pytest.raises(ArchitectureError, match=r"visual\.\*"):
        infer_architecture(state, source="text_only.pt")


def test_architecture_round_trips_through_the_dataclass() -> None:
    arch = infer_architecture(reference_on_meta("RN101").state_dict())
    assert isinstance(arch, Architecture)
    assert dataclasses.replace(arch) == arch


def test_testing_table_is_open_clips_configs_of_the_nine_models() -> None:
    """_testing.FULL, from which every generated checkpoint's shapes come, against open_clip's own
    model configs of the same nine models (the -quickgelu ones have the same shapes)."""
    import json
    from pathlib import Path

    if os.environ.get("CLIPFAST_COMPAT"):
        # make compat installs no open_clip (its tests, and its floors, are not in the compat subset);
        # the table is the same on every version and is checked in the development environment.
        pytest.skip("open_clip is not part of make compat's environments")
    import open_clip

    configs = Path(open_clip.__file__).parent / "model_configs"
    names = {
        "ViT-B/32": "ViT-B-32",
        "ViT-B/16": "ViT-B-16",
        "ViT-L/14": "ViT-L-14",
        "ViT-L/14@336px": "ViT-L-14-336",
    }
    assert len(_testing.FULL) == 9
    for name, spec in _testing.FULL.items():
        for variant in (names.get(name, name), names.get(name, name) + "-quickgelu"):
            cfg = json.loads((configs / f"{variant}.json").read_text())
            vision, text = cfg["vision_cfg"], cfg["text_cfg"]
            layers = tuple(vision["layers"]) if isinstance(vision["layers"], list) else vision["layers"]
            assert asdict(spec) == {
                "embed_dim": cfg["embed_dim"],
                "image_resolution": vision["image_size"],
                "vision_layers": layers,
                "vision_width": vision["width"],
                "vision_patch_size": vision.get("patch_size"),
                "context_length": text["context_length"],
                "vocab_size": text["vocab_size"],
                "transformer_width": text["width"],
                "transformer_heads": text["heads"],
                "transformer_layers": text["layers"],
            }, variant
