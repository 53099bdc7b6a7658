"""clipfast.load_checkpoint against open_clip 3.3's load_checkpoint on the same models and files:
the same state dict and the same incompatible keys; the superset where open_clip fails."""

from __future__ import annotations

import copy
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import clipfast
import pytest
import torch
from clipfast.errors import ArchitectureError, CheckpointError, UnsafeCheckpointError
from open_clip_models import CONFIGS, assert_same_state, open_clip_model, save, write_folder

open_clip = pytest.importorskip("open_clip")
from open_clip.factory import load_checkpoint as reference_load_checkpoint  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grown(cfg: dict[str, Any]) -> dict[str, Any]:
    """The configuration at a larger image size (two more patches a side) and context length (16 -> 20)."""
    out = copy.deepcopy(cfg)
    vision = out["vision_cfg"]
    if "patch_size" in vision:
        vision["image_size"] += 2 * vision["patch_size"]
    out["text_cfg"]["context_length"] = 20
    return out


def clipfast_clip(cfg: dict[str, Any], tmp: Path, seed: int = 5) -> Any:
    """clipfast's own CLIP for an open_clip configuration (loaded from a folder, so real memory)."""
    folder = write_folder(tmp / f"clipfast-model-{seed}", cfg, open_clip_model(cfg, seed).state_dict())
    return clipfast.load(folder, device="cpu")[0]


def compare(
    make_model: Callable[[], torch.nn.Module], path: Path, strict: bool = True, **reference_kwargs: Any
) -> tuple[Any, torch.nn.Module]:
    """Load ``path`` into two copies of the same model, with open_clip's and clipfast's
    load_checkpoint: the results and the models' state dicts must be equal."""
    reference, ours = make_model(), make_model()
    ours.load_state_dict(reference.state_dict())
    expected = reference_load_checkpoint(reference, str(path), strict=strict, **reference_kwargs)
    got = clipfast.load_checkpoint(ours, path, strict=strict)
    assert got == expected
    assert list(got.missing_keys) == list(expected.missing_keys)
    assert list(got.unexpected_keys) == list(expected.unexpected_keys)
    assert_same_state(ours.state_dict(), reference.state_dict())
    return got, ours


def _files(tmp: Path, source: torch.nn.Module) -> dict[str, Path]:
    sd = source.state_dict()
    files = {
        "pt": save(tmp / "raw.pt", sd),
        "safetensors": save(tmp / "weights.safetensors", sd),
        "fp16": save(tmp / "half.pt", {k: v.half() for k, v in sd.items()}),
    }
    torch.save({"epoch": 7, "state_dict": sd, "optimizer": {"lr": 0.1}}, tmp / "wrapped.bin")
    files["state_dict wrapped .bin"] = tmp / "wrapped.bin"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp / "ddp.pth")
    files["ddp prefix"] = tmp / "ddp.pth"
    one = OrderedDict(sd)
    one["logit_scale"] = one["logit_scale"].reshape(1)
    files["logit_scale [1]"] = save(tmp / "scale1.pt", one)
    ids = OrderedDict(sd)
    ids["text.transformer.embeddings.position_ids"] = torch.arange(16)[None]
    files["position_ids"] = save(tmp / "ids.pt", ids)
    return files


@pytest.mark.parametrize("name", ["gelu_h80", "quick_h88", "resnet"])
def test_open_clip_clip_files(name: str, tmp_path: Path) -> None:
    cfg = CONFIGS[name]
    files = _files(tmp_path, open_clip_model(name, seed=1))
    for kind, path in files.items():
        compare(lambda: open_clip_model(name, seed=2), path)
        if kind == "pt":
            compare(lambda: open_clip_model(name, seed=2), path, strict=False)
    # Into a model of larger image size and context length: the position embeddings are resized.
    if "patch_size" in cfg["vision_cfg"]:
        _, resized = compare(lambda: open_clip_model(grown(cfg), seed=2), files["pt"])
        # fp16 weights: torch has no fp16 bicubic on the CPU, open_clip fails; clipfast resizes in fp32.
        with pytest.raises(NotImplementedError):
            reference_load_checkpoint(open_clip_model(grown(cfg)), str(files["fp16"]))
        model = open_clip_model(grown(cfg), seed=2)
        clipfast.load_checkpoint(model, files["fp16"])
        for key, value in resized.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=3e-3)


def test_custom_text_clip(tmp_path: Path) -> None:
    """OpenAI's text layout into a CustomTextCLIP (moved under text.), and its own layout."""
    cfg = CONFIGS["gelu_h80"]
    clip_layout = save(tmp_path / "clip.pt", open_clip_model("gelu_h80", seed=1).state_dict())
    custom = open_clip_model(cfg, seed=3, custom_text=True)
    custom_layout = save(tmp_path / "custom.safetensors", custom.state_dict())
    for path in (clip_layout, custom_layout):
        compare(lambda: open_clip_model(cfg, seed=2, custom_text=True), path)
    compare(lambda: open_clip_model(grown(cfg), seed=2, custom_text=True), clip_layout)


def test_strict_false_reports_the_same_incompatible_keys(tmp_path: Path) -> None:
    sd = open_clip_model("gelu_h80", seed=1).state_dict()
    del sd["visual.ln_post.weight"], sd["transformer.resblocks.1.mlp.c_fc.bias"]
    sd["extra.thing"] = torch.ones(3)
    path = save(tmp_path / "partial.pt", sd)
    result, _ = compare(lambda: open_clip_model("gelu_h80", seed=2), path, strict=False)
    assert result.missing_keys and result.unexpected_keys == ["extra.thing"]
    # strict=True: the same RuntimeError as open_clip's, naming the file.
    with pytest.raises(RuntimeError, match=r"visual\.ln_post\.weight") as info:
        clipfast.load_checkpoint(open_clip_model("gelu_h80"), path)
    assert str(path) in str(info.value)


def test_logit_bias(tmp_path: Path) -> None:
    """A model with a logit_bias takes a zero one from a file without; a file with one loads into
    it (reshaped); into a model without one open_clip raises AttributeError, clipfast a typed error."""
    cfg = {**copy.deepcopy(CONFIGS["gelu_h80"]), "init_logit_bias": -10.0}
    plain = save(tmp_path / "plain.pt", open_clip_model("gelu_h80", seed=1).state_dict())
    _, model = compare(lambda: open_clip_model(cfg, seed=2), plain)
    assert model.logit_bias.item() == 0.0
    biased = open_clip_model({**cfg, "nonscalar_logit_scale": True}, seed=4).state_dict()
    with_bias = save(tmp_path / "bias.pt", biased)
    compare(lambda: open_clip_model(cfg, seed=2), with_bias)
    with pytest.raises(AttributeError):
        reference_load_checkpoint(open_clip_model("gelu_h80"), str(with_bias))
    with pytest.raises(ArchitectureError, match="logit_bias") as info:
        clipfast.load_checkpoint(open_clip_model("gelu_h80"), with_bias)
    assert str(with_bias) in str(info.value)


class _Holder(torch.nn.Module):
    """A module holding a CLIP (a fine-tuning wrapper): no logit_scale of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.clip = open_clip_model("gelu_h80", seed=2)


class _ScaleOnly(torch.nn.Module):
    """A module with open_clip's logit attributes and neither tower."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.ones([]))
        self.logit_bias = None


def test_models_open_clip_cannot_load_into_are_refused(tmp_path: Path) -> None:
    """open_clip's load_checkpoint takes a whole CLIP: for a wrapper holding one, a single tower or
    a module without the towers the file has, it fails on the attribute (AttributeError). clipfast
    refuses them too (it had returned every key as missing and unexpected, or loaded a tower's
    keys) with an ArchitectureError naming the file, before touching the model."""
    sd = open_clip_model("gelu_h80", seed=1).state_dict()
    files = {
        "whole": save(tmp_path / "whole.pt", sd),
        "no logit_scale": save(tmp_path / "noscale.pt", {k: v for k, v in sd.items() if k != "logit_scale"}),
        "image tower": save(tmp_path / "visual.pt", {k: v for k, v in sd.items() if k.startswith("visual.")}),
        "tower's own keys": save(
            tmp_path / "own.pt", {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
        ),
    }
    models: dict[str, Callable[[], torch.nn.Module]] = {
        "wrapper": _Holder,
        "image tower": lambda: open_clip_model("gelu_h80", seed=2).visual,
        "text tower": lambda: open_clip_model(CONFIGS["gelu_h80"], seed=2, custom_text=True).text,
        "no towers": _ScaleOnly,
    }
    for name, make in models.items():
        for kind, path in files.items():
            for strict in (True, False):
                case = f"{name} <- {kind}, strict={strict}"
                with pytest.raises(AttributeError):
                    reference_load_checkpoint(make(), str(path), strict=strict)
                model = make()
                before = copy.deepcopy(model.state_dict())
                with pytest.raises(ArchitectureError, match=re.escape(str(path))):
                    clipfast.load_checkpoint(model, path, strict=strict)
                    pytest.fail(case)
                assert_same_state(model.state_dict(), before)
    # clipfast's (and openai/CLIP's) CLIP has no logit_bias, which open_clip reads: still loaded.
    ours = clipfast_clip(CONFIGS["gelu_h80"], tmp_path)
    assert not clipfast.load_checkpoint(ours, files["whole"]).missing_keys


def test_model_keeps_its_device_and_dtype(tmp_path: Path) -> None:
    path = save(tmp_path / "fp32.safetensors", open_clip_model("gelu_h80", seed=1).state_dict())
    compare(lambda: open_clip_model("gelu_h80", seed=2).half(), path)
    model = open_clip_model("gelu_h80", seed=2).to(torch.bfloat16)
    clipfast.load_checkpoint(model, path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_clipfast_clip_takes_the_same_conversions(tmp_path: Path) -> None:
    """Into clipfast's own CLIP: the state dict open_clip's load_checkpoint gives its CLIP, for
    open_clip's layouts, resized position embeddings and CustomTextCLIP's layout too."""
    cfg = CONFIGS["gelu_h80"]
    source = open_clip_model("gelu_h80", seed=1)
    files = _files(tmp_path, source)
    files["custom text layout"] = save(
        tmp_path / "custom.pt", open_clip_model(cfg, seed=1, custom_text=True).state_dict()
    )
    for kind, path in files.items():
        for target in (cfg, grown(cfg)) if kind != "fp16" else (cfg,):  # (open_clip cannot resize fp16)
            reference = open_clip_model(target, seed=2, custom_text=kind == "custom text layout")
            reference_load_checkpoint(reference, str(path))
            ours = clipfast_clip(target, tmp_path)
            result = clipfast.load_checkpoint(ours, path)
            assert not result.missing_keys and not result.unexpected_keys, kind
            expected = reference.state_dict()
            if kind == "custom text layout":
                expected = OrderedDict((k.removeprefix("text."), v) for k, v in expected.items())
            assert_same_state(ours.state_dict(), expected)


def test_torchscript_archive_read_safely(openai_archive: Callable[[str], Path]) -> None:
    """OpenAI's TorchScript archives: open_clip needs weights_only=False (runs the file's code);
    clipfast reads them safely, with the same result."""
    from clipfast import _testing

    spec = _testing.tiny("ViT-B/32")
    archive = openai_archive("ViT-B/32")
    cfg = {
        "embed_dim": spec.embed_dim,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": spec.vision_width, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(lambda: open_clip_model(cfg), archive, weights_only=False)


def test_model_wrapped_checkpoints_load(tmp_path: Path) -> None:
    """Weights under "model" (other training loops): open_clip reports every key missing, clipfast
    loads them."""
    sd = open_clip_model("gelu_h80", seed=1).state_dict()
    path = tmp_path / "model.pt"
    torch.save({"model": sd, "step": 10}, path)
    model = open_clip_model("gelu_h80", seed=2)
    assert clipfast.load_checkpoint(model, path).missing_keys == []
    assert_same_state(model.state_dict(), sd)


def test_bad_files(tmp_path: Path) -> None:
    import numpy as np

    model = open_clip_model("gelu_h80")
    npy = tmp_path / "weights.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(CheckpointError, match=r"weights\.npy"):
        clipfast.load_checkpoint(model, npy)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        clipfast.load_checkpoint(model, garbage)
    mislabelled = tmp_path / "weights.safetensors"
    torch.save(model.state_dict(), mislabelled)
    with pytest.raises(CheckpointError, match=r"weights\.safetensors"):
        clipfast.load_checkpoint(model, mislabelled)
    # Another text width: open_clip fails on an assertion, clipfast names the file.
    other = copy.deepcopy(CONFIGS["gelu_h80"])
    other["text_cfg"].update(width=128, heads=2, context_length=20)
    wide = save(tmp_path / "wide.pt", open_clip_model(other).state_dict())
    with pytest.raises(AssertionError):
        reference_load_checkpoint(open_clip_model("gelu_h80"), str(wide))
    with pytest.raises(ArchitectureError, match=r"wide\.pt.*text width"):
        clipfast.load_checkpoint(open_clip_model("gelu_h80"), wide)
    with pytest.raises(FileNotFoundError):
        clipfast.load_checkpoint(model, tmp_path / "absent.pt")


def test_pickle_code_is_never_run(tmp_path: Path) -> None:
    from attacks.malicious import ATTACKS

    marker = tmp_path / "ran"
    for name in ("weight-os.system", "state_dict-builtins.eval", "root-subprocess.Popen"):
        path = ATTACKS[name](tmp_path / f"{name}.pt", marker)
        with pytest.raises(UnsafeCheckpointError):
            clipfast.load_checkpoint(open_clip_model("gelu_h80"), path)
        assert not marker.exists()


def test_load_hooks_see_the_file_values(tmp_path: Path) -> None:
    """clipfast fills parameters straight from the file; a model whose load hooks change the
    state dict gets it through load_state_dict as it is, as with open_clip."""
    path = save(tmp_path / "w.safetensors", open_clip_model("gelu_h80", seed=1).state_dict())

    def make() -> torch.nn.Module:
        model = open_clip_model("gelu_h80", seed=2)

        def double(state_dict: Any, prefix: str, *args: Any) -> None:
            key = prefix + "proj"
            state_dict[key] = state_dict[key] * 2

        model.visual._register_load_state_dict_pre_hook(double)
        return model

    _, model = compare(make, path)
    assert torch.equal(model.visual.proj, open_clip_model("gelu_h80", seed=1).visual.proj * 2)


def test_load_post_hooks_run_as_with_open_clip(tmp_path: Path) -> None:
    """Where every tensor is filled from the file, clipfast skips load_state_dict's copies; a model
    with a hook that runs after loading still gets its call, with the same incompatible keys."""
    path = save(tmp_path / "w.safetensors", open_clip_model("gelu_h80", seed=1).state_dict())
    calls: list[tuple[list[str], list[str]]] = []

    def make() -> torch.nn.Module:
        model = open_clip_model("gelu_h80", seed=2)

        def record(module: torch.nn.Module, keys: Any) -> None:
            calls.append((list(keys.missing_keys), list(keys.unexpected_keys)))

        model.register_load_state_dict_post_hook(record)
        return model

    compare(make, path)
    # compare() copies the reference into its twin first; then open_clip's load, then clipfast's
    assert calls == [([], [])] * 3


def test_shared_weights_load_as_with_open_clip(tmp_path: Path) -> None:
    """A tensor shared under two names (tied weights) is written once, and the result is open_clip's."""
    path = save(tmp_path / "w.safetensors", open_clip_model("gelu_h80", seed=1).state_dict())

    def make() -> torch.nn.Module:
        model = open_clip_model("gelu_h80", seed=2)
        model.register_buffer("tied_proj", model.visual.proj)  # the same tensor, a second name
        return model

    with pytest.raises(RuntimeError, match="tied_proj"):  # strict: the file lacks the second name
        clipfast.load_checkpoint(make(), path)
    result, model = compare(make, path, strict=False)
    assert result.missing_keys == ["tied_proj"]
    assert torch.equal(model.tied_proj, open_clip_model("gelu_h80", seed=1).visual.proj)


class _KeepsItsImageTower(open_clip.model.CLIP):  # type: ignore[misc]
    """A fine-tuning model whose own load_state_dict loads only the text tower and scale."""

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        kept = {k: v for k, v in state_dict.items() if not k.startswith("visual.")}
        return super().load_state_dict(kept, strict=False, assign=assign)


def test_a_models_own_load_state_dict_decides_as_with_open_clip(tmp_path: Path) -> None:
    """open_clip hands the state dict to the model's load_state_dict, which may drop or change
    entries: clipfast must not write the file's values into the model's tensors before it, nor
    skip it. (Found by a probe: the image tower was overwritten and the override never ran.)"""
    path = save(tmp_path / "w.safetensors", open_clip_model("gelu_h80", seed=1).state_dict())

    def make() -> torch.nn.Module:
        model = _KeepsItsImageTower(**CONFIGS["gelu_h80"])
        torch.nn.Module.load_state_dict(model, open_clip_model("gelu_h80", seed=2).state_dict())
        return model.eval()

    result, model = compare(make, path)
    assert len(result.missing_keys) > 0  # the image tower's keys, as the override reports them
    assert torch.equal(model.visual.proj, open_clip_model("gelu_h80", seed=2).visual.proj)


def test_loaded_tensors_count_as_modified_for_autograd(tmp_path: Path) -> None:
    """A backward through a graph built before the load fails as after open_clip's load (torch's
    copy_ bumps each tensor's version counter), instead of mixing old activations with new weights."""
    path = save(tmp_path / "w.safetensors", open_clip_model("gelu_h80", seed=1).state_dict())
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    outcomes = []
    for load in (reference_load_checkpoint, clipfast.load_checkpoint):
        model = open_clip_model("gelu_h80", seed=2)
        loss = model.encode_image(image).sum()
        load(model, str(path))
        try:
            loss.backward()
            outcomes.append("ran")
        except RuntimeError as err:
            outcomes.append("modified by an inplace operation" in str(err))
    assert outcomes[0] is True
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("fastvit", [True, False])
def test_mobileclip_conversion_is_open_clips(fastvit: bool) -> None:
    """open_clip's one third-party conversion (Apple's MobileCLIP checkpoints): the same state dict
    as its convert_state_dict, image tower through timm's own filter as there."""
    import types

    from clipfast.state_dict import _third_party
    from open_clip.convert import convert_state_dict

    gen = torch.Generator().manual_seed(0)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    if fastvit:
        image = {
            "image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight": t(4, 3, 3, 3),
            "image_encoder.model.patch_embed.0.rbr_conv.0.bn.weight": t(4),
            "image_encoder.model.network.0.0.layer_scale_1": t(4, 1, 1),
            "image_encoder.model.network.1.proj.0.lkb_origin.conv.weight": t(8, 4, 7, 7),
            "image_encoder.model.network.2.0.convffn.fc1.conv.weight": t(16, 8, 1, 1),
            "image_encoder.model.conv_exp.se.reduce.weight": t(2, 8, 1, 1),
        }
    else:
        image = {
            "image_encoder.model.patch_emb.0.block.conv.weight": t(4, 3, 3, 3),
            "image_encoder.model.patch_emb.0.block.norm.weight": t(4),
        }
    text = {
        "text_encoder.projection_layer": t(8, 6),
        "text_encoder.embedding_layer.weight": t(20, 8),
        "text_encoder.positional_embedding.pos_embed.pos_embed": t(1, 1, 5, 8),
        "text_encoder.transformer.0.pre_norm_mha.0.weight": t(8),
        "text_encoder.transformer.0.pre_norm_mha.1.qkv_proj.weight": t(24, 8),
        "text_encoder.transformer.0.pre_norm_mha.1.qkv_proj.bias": t(24),
        "text_encoder.transformer.0.pre_norm_mha.1.out_proj.weight": t(8, 8),
        "text_encoder.transformer.0.pre_norm_ffn.0.bias": t(8),
        "text_encoder.transformer.0.pre_norm_ffn.1.weight": t(32, 8),
        "text_encoder.transformer.0.pre_norm_ffn.4.weight": t(8, 32),
        "text_encoder.final_layer_norm.weight": t(8),
        "logit_scale": t(()),
    }
    state = OrderedDict({**image, **text})
    model = types.SimpleNamespace(visual=types.SimpleNamespace(trunk=types.SimpleNamespace(head=None)))
    try:
        expected = convert_state_dict(model, OrderedDict(state))
    except Exception as err:  # timm's filter needs more of its own layout for this variant
        pytest.skip(f"timm's filter refuses this minimal layout: {err}")
    got = _third_party(model, OrderedDict(state), "mobileclip.pt")  # type: ignore[arg-type]
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
