"""open_clip models through clipfast.load, against open_clip_torch 3.3 on the same folders and files:
state dicts, outputs, preprocessing, the settings no shape shows, and the configurations refused."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pytest
import torch
from clipfast.arch import infer_architecture
from clipfast.errors import ArchitectureError, CheckpointError, ModelNotFoundError
from clipfast.published import TABLE, derive
from open_clip_models import (
    CONFIGS,
    assert_same_outputs,
    assert_same_state,
    inputs,
    open_clip_model,
    reference_load,
    save,
    write_folder,
)
from PIL import Image

open_clip = pytest.importorskip("open_clip")

IMAGES = Path(__file__).parent / "images"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_quietly(name: Any, **kwargs: Any) -> tuple[Any, Any]:
    """clipfast.load, failing on clipfast's warning that it assumed a setting."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clipfast.load(name, device="cpu", **kwargs)
    assumed = [w for w in caught if "assumed" in str(w.message)]
    assert not assumed, [str(w.message) for w in assumed]
    return result


def first_block(model: Any) -> Any:
    return model.visual.transformer.resblocks[0]


# --- folders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folder_equals_open_clip(name: str, tmp_path: Path) -> None:
    cfg = CONFIGS[name]
    folder = write_folder(tmp_path / name, cfg, open_clip_model(name).state_dict())
    reference, _ = reference_load(folder)
    ours, _ = load_quietly(folder)
    assert_same_state(ours.state_dict(), reference.state_dict())
    assert_same_outputs(ours, reference)
    if "patch_size" in cfg["vision_cfg"]:
        assert first_block(ours).attn.num_heads == first_block(reference).attn.num_heads
        assert type(first_block(ours).mlp.gelu).__name__ == type(first_block(reference).mlp.gelu).__name__
        assert first_block(ours).mlp.c_fc.out_features == first_block(reference).mlp.c_fc.out_features
    else:
        assert ours.visual.attnpool.num_heads == reference.visual.attnpool.num_heads
    text_block = ours.transformer.resblocks[0]
    assert text_block.attn.num_heads == reference.transformer.resblocks[0].attn.num_heads
    assert type(text_block.mlp.gelu).__name__ == type(reference.transformer.resblocks[0].mlp.gelu).__name__


def test_both_activations_from_one_folders_two_configs(tmp_path: Path) -> None:
    """The same weights under a GELU and a QuickGELU configuration: each load is open_clip's."""
    weights = open_clip_model("gelu_h80").state_dict()
    outputs = []
    for quick in (False, True):
        cfg = {**copy.deepcopy(CONFIGS["gelu_h80"]), "quick_gelu": quick}
        folder = write_folder(tmp_path / f"quick_{quick}", cfg, weights)
        reference, _ = reference_load(folder)
        ours, _ = load_quietly(folder)
        assert_same_outputs(ours, reference)
        assert ours.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == (
            "QuickGELU" if quick else "GELU"
        )
        image, _ = inputs(ours.visual.input_resolution, ours.context_length)
        with torch.no_grad():
            outputs.append(ours.encode_image(image))
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


def test_weights_file_open_clip_picks_and_a_file_in_the_folder(tmp_path: Path) -> None:
    cfg = CONFIGS["gelu_h80"]
    first, second = open_clip_model("gelu_h80", seed=1), open_clip_model("gelu_h80", seed=2)
    folder = write_folder(tmp_path / "both", cfg, first.state_dict())
    save(folder / "open_clip_pytorch_model.bin", second.state_dict())
    reference, _ = reference_load(folder)  # open_clip prefers open_clip_model.safetensors
    for name in (folder, f"local-dir:{folder}", str(folder / "open_clip_model.safetensors")):
        ours, _ = load_quietly(name)
        assert_same_state(ours.state_dict(), reference.state_dict())
    # The .bin inside the folder comes with the folder's configuration (GELU, 80-wide heads).
    ours, _ = load_quietly(folder / "open_clip_pytorch_model.bin")
    assert_same_state(ours.state_dict(), second.state_dict())
    assert_same_outputs(ours, second)
    # Only other names: open_clip's glob, safetensors first, then by name.
    other = write_folder(tmp_path / "glob", cfg, second.state_dict(), weights="b.safetensors")
    save(other / "a.pth", first.state_dict())
    reference, _ = reference_load(other)
    ours, _ = load_quietly(other)
    assert_same_state(ours.state_dict(), reference.state_dict())
    assert_same_state(ours.state_dict(), second.state_dict())


def test_bin_folder_and_training_layouts(tmp_path: Path) -> None:
    """open_clip_pytorch_model.bin, also as saved by open_clip's training (wrapped, DDP prefix)."""
    model = open_clip_model("quick_h88")
    plain = write_folder(
        tmp_path / "bin", CONFIGS["quick_h88"], model.state_dict(), weights="open_clip_pytorch_model.bin"
    )
    reference, _ = reference_load(plain)
    ours, _ = load_quietly(plain)
    assert_same_state(ours.state_dict(), reference.state_dict())
    assert_same_outputs(ours, reference)
    wrapped = {
        "epoch": 3,
        "name": "run",
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
    }
    folder = write_folder(
        tmp_path / "trained", CONFIGS["quick_h88"], {}, weights="open_clip_pytorch_model.bin"
    )
    torch.save(wrapped, folder / "open_clip_pytorch_model.bin")
    ours, _ = load_quietly(folder)
    assert_same_state(ours.state_dict(), reference.state_dict())


def test_custom_text_layout_and_one_element_logit_scale(tmp_path: Path) -> None:
    """open_clip's CustomTextCLIP keeps OpenAI's text tower under `text.`; nonscalar_logit_scale
    stores logit_scale as [1]. Both are the same model."""
    cfg = {**copy.deepcopy(CONFIGS["gelu_h80"]), "custom_text": True, "nonscalar_logit_scale": True}
    model = open_clip_model(cfg, custom_text=True)
    folder = write_folder(tmp_path / "custom", cfg, model.state_dict())
    reference, _ = reference_load(folder)
    assert "text.transformer.resblocks.0.attn.in_proj_weight" in reference.state_dict()
    ours, _ = load_quietly(folder)
    assert_same_outputs(ours, reference)
    assert torch.equal(ours.logit_scale, reference.logit_scale.reshape(()))


def test_resized_to_the_configurations_size(tmp_path: Path) -> None:
    """A config whose image size / context length is not the weights': open_clip resizes the
    position embeddings (bicubic, linear); so does clipfast. (fp16 weights: open_clip fails, torch
    has no fp16 bicubic on the CPU; clipfast resizes them in fp32.)"""
    half = {k: v.half() for k, v in open_clip_model("gelu_h80").state_dict().items()}
    weights = {k: v.float() for k, v in half.items()}
    cfg = copy.deepcopy(CONFIGS["gelu_h80"])
    cfg["vision_cfg"]["image_size"] = 48  # 4x4 -> 6x6 patches
    cfg["text_cfg"]["context_length"] = 20
    folder = write_folder(tmp_path / "resized", cfg, weights)
    reference, _ = reference_load(folder)
    ours, preprocess = load_quietly(folder)
    assert ours.visual.input_resolution == 48 and ours.context_length == 20
    assert preprocess.transforms[0].size == 48
    assert_same_state(ours.state_dict(), reference.state_dict())
    assert_same_outputs(ours, reference)
    fp16 = write_folder(tmp_path / "fp16", cfg, half)
    ours, _ = load_quietly(fp16)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=2e-3)


def _sized(name: str, **vision: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(CONFIGS[name])
    cfg["vision_cfg"].update(vision)
    return cfg


#: Sizes open_clip takes that no published configuration uses: [h, w] for a square, an image size
#: between two multiples of the patch (the strided convolutions floor the grid). Each: the
#: configuration, and the one of the weights (None: the same).
SIZES = {
    "patch as a list": (_sized("gelu_h80", patch_size=[8, 8]), None),
    "image as a list": (_sized("gelu_h80", image_size=[32, 32]), None),
    "both as tuples": (_sized("quick_h88", image_size=(48, 48), patch_size=(16, 16)), None),
    "between patches": (_sized("gelu_h80", image_size=39), None),
    "between patches, resized": (_sized("gelu_h80", image_size=[52, 52]), CONFIGS["gelu_h80"]),
    "resnet between multiples of 32": (_sized("resnet", image_size=80), None),
    "resnet below 64": (_sized("resnet", image_size=48), None),
}


@pytest.mark.parametrize("case", list(SIZES))
def test_sizes_as_lists_and_between_patches(case: str, tmp_path: Path) -> None:
    cfg, weights_cfg = SIZES[case]
    weights = open_clip_model(weights_cfg or cfg).state_dict()
    folder = write_folder(tmp_path / "sized", json.loads(json.dumps(cfg)), weights)
    reference, reference_preprocess = reference_load(folder)
    ours, preprocess = load_quietly(folder)
    size = cfg["vision_cfg"]["image_size"]
    assert ours.visual.input_resolution == (size if isinstance(size, int) else size[0])
    assert_same_state(ours.state_dict(), reference.state_dict())
    assert_same_outputs(ours, reference)
    for image in _images():
        assert torch.equal(preprocess(image), reference_preprocess(image)), (case, image.size)


def test_hf_hub_offline_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_cache import write_cached_repo

    model = open_clip_model("gelu_h104")
    local = write_folder(
        tmp_path / "local", CONFIGS["gelu_h104"], model.state_dict(), preprocess_cfg={"mean": [0.5] * 3}
    )
    cache = tmp_path / "hub"
    files = {name: local / name for name in ("open_clip_config.json", "open_clip_model.safetensors")}
    write_cached_repo(cache, "laion/tiny", files)
    write_cached_repo(
        cache,
        "laion/noweights",
        {
            "open_clip_config.json": local / "open_clip_config.json",
            "model.safetensors": local / "open_clip_model.safetensors",
        },
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference, _ = reference_load(local)
    ours, preprocess = load_quietly("hf-hub:laion/tiny")
    assert_same_state(ours.state_dict(), reference.state_dict())
    assert preprocess.transforms[-1].mean == (0.5, 0.5, 0.5)
    with pytest.raises(ModelNotFoundError, match="laion/absent"):
        clipfast.load("hf-hub:laion/absent", device="cpu")
    # open_clip's hf-hub: takes open_clip_model.safetensors or open_clip_pytorch_model.bin only.
    with pytest.raises(ModelNotFoundError, match=r"laion/noweights.*open_clip_model\.safetensors"):
        clipfast.load("hf-hub:laion/noweights", device="cpu")


# --- preprocessing --------------------------------------------------------------------------------


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    photos = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("*.jpg"))[:2]]
    small = Image.fromarray(rng.integers(0, 256, (21, 37, 3), dtype=np.uint8))
    tall = Image.fromarray(rng.integers(0, 256, (90, 31, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 256, (40, 70), dtype=np.uint8), "L")
    return [*photos, small, tall, grey, small.convert("P")]


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        {"interpolation": "bilinear"},
        {"resize_mode": "squash"},
        {"resize_mode": "longest"},
        {"resize_mode": "longest", "fill_color": 128, "interpolation": "bilinear", "mean": 0.4, "std": 0.3},
    ],
    ids=["default", "mean_std", "bilinear", "squash", "longest", "longest_fill"],
)
def test_preprocess_equals_open_clips(cfg: dict[str, Any]) -> None:
    from clipfast.formats.open_clip import preprocess_config
    from clipfast.transforms import _standard_plan, for_config
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    size = 48
    merged = merge_preprocess_dict(PreprocessCfg(), {**cfg, "size": size})
    reference = image_transform_v2(PreprocessCfg(**merged), is_train=False)
    ours = for_config(preprocess_config(cfg, "open_clip_config.json"), size)
    # clip's pipeline (shortest side, bicubic), whatever the mean and std, runs in Rust.
    fast = (
        cfg.get("resize_mode", "shortest") == "shortest" and cfg.get("interpolation", "bicubic") == "bicubic"
    )
    assert (_standard_plan(ours.transforms) is not None) == fast
    for image in _images():
        assert torch.equal(ours(image), reference(image)), (cfg, image.mode, image.size)


def test_folder_preprocess_is_the_configurations(tmp_path: Path) -> None:
    cfg = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "resize_mode": "squash"}
    folder = write_folder(
        tmp_path / "pre", CONFIGS["resnet"], open_clip_model("resnet").state_dict(), preprocess_cfg=cfg
    )
    _, reference = reference_load(folder)
    _, ours = load_quietly(folder)
    for image in _images():
        assert torch.equal(ours(image), reference(image))


# --- bare files: what is decided, what is assumed ---------------------------------------------------


def test_bare_file_warns_once_and_arguments_decide(tmp_path: Path) -> None:
    """A bare state dict says neither the activation nor the head width: clipfast assumes
    QuickGELU and 64-wide heads, says so once, and the arguments give the right model."""
    cfg = copy.deepcopy(CONFIGS["gelu_h80"])
    cfg["vision_cfg"].update(width=320, head_width=80)  # 4 heads; 64-wide would be 5
    reference = open_clip_model(cfg)
    path = save(tmp_path / "bare.pt", reference.state_dict())
    with pytest.warns(UserWarning) as record:
        guessed, _ = clipfast.load(path, device="cpu")
    messages = [str(w.message) for w in record if "assumed" in str(w.message)]
    assert len(messages) == 1
    assert str(path) in messages[0] and "quick_gelu=" in messages[0] and "vision_heads=" in messages[0]
    assert first_block(guessed).attn.num_heads == 5
    assert type(first_block(guessed).mlp.gelu).__name__ == "QuickGELU"
    ours, _ = load_quietly(path, quick_gelu=False, vision_heads=4, transformer_heads=1)
    assert_same_outputs(ours, reference)
    # Only the head counts given: the activation is still assumed, and the warning says so.
    with pytest.warns(UserWarning, match="quick_gelu=") as record:
        clipfast.load(path, device="cpu", vision_heads=4, transformer_heads=1)
    assert "vision_heads=" not in str(record[0].message)
    # Only the activation given: the 64-wide text heads are still a guess, and it says so.
    with pytest.warns(UserWarning, match=r"transformer_heads=1 \(64-wide heads\)") as record:
        clipfast.load(path, device="cpu", quick_gelu=False, vision_heads=4)
    assert "quick_gelu=" not in str(record[0].message).split("assumed")[1]


def test_bare_file_beside_an_open_clip_config_is_the_folders_model(tmp_path: Path) -> None:
    model = open_clip_model("gelu_h104")
    folder = write_folder(
        tmp_path / "m", CONFIGS["gelu_h104"], model.state_dict(), weights="open_clip_pytorch_model.bin"
    )
    ours, _ = load_quietly(folder / "open_clip_pytorch_model.bin")
    assert_same_outputs(ours, model)


def _openai_structured() -> dict[str, dict[str, Any]]:
    from clipfast.formats.open_clip import model_settings

    folder = Path(open_clip.__file__).parent / "model_configs"
    accepted = {}
    for path in sorted(folder.glob("*.json")):
        cfg = json.loads(path.read_text())
        try:
            model_settings(cfg, path.name)
        except ArchitectureError:
            continue
        accepted[path.stem] = cfg
    return accepted


def test_published_table_is_open_clips() -> None:
    folder = Path(open_clip.__file__).parent / "model_configs"
    configs = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert derive(configs) == TABLE
    names = {entry.name for entry in TABLE.values()}
    assert {"ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-e-14", "RN50", "ViT-B-32"} <= names


def _meta_open_clip(cfg: dict[str, Any]) -> Any:
    from clipfast.model import _SkipInitOnMeta

    with torch.device("meta"), _SkipInitOnMeta():
        return open_clip.model.CLIP(**cfg)


@pytest.mark.parametrize(
    "name", ["ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-e-14", "ViT-L-14-quickgelu", "RN50x4"]
)
def test_full_size_published_models_on_meta(name: str) -> None:
    """Shapes of open_clip's published configurations, up to ViT-bigG-14 and ViT-e-14 (on the meta
    device: no memory): a bare file's heads come from the table; with the configuration, every
    setting is the configuration's and clipfast's model has open_clip's shapes."""
    from clipfast.formats.open_clip import model_settings
    from clipfast.model import construct_on_meta

    cfg = _openai_structured()[name]
    reference = _meta_open_clip(cfg)
    shapes = {k: v for k, v in reference.state_dict().items()}
    bare = infer_architecture(shapes)
    vision = cfg["vision_cfg"]
    width = vision["width"] * (32 if isinstance(vision["layers"], list) else 1)
    assert bare.vision_heads == width // vision.get("head_width", 64)
    assert bare.transformer_heads == cfg["text_cfg"]["heads"]
    assert bare.sources["vision_heads"].kind == "published"
    assert set(bare.assumed()) == (
        {"vision_activation", "text_activation"} - ({"vision_activation"} if not bare.is_vit else set())
    )
    decided = infer_architecture(shapes, decided=model_settings(cfg, name))
    assert decided == bare.__class__(
        **{
            **bare.settings(),
            "vision_activation": decided.vision_activation,
            "text_activation": decided.text_activation,
        }
    )
    assert decided.text_activation == ("quick_gelu" if cfg.get("quick_gelu") else "gelu")
    assert decided.assumed() == []
    ours = construct_on_meta(decided)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in shapes.items()
    }


def test_every_accepted_configuration_builds_open_clips_shapes() -> None:
    from clipfast.formats.open_clip import model_settings
    from clipfast.model import construct_on_meta

    accepted = _openai_structured()
    assert len(accepted) >= 40
    for name, cfg in accepted.items():
        shapes = {k: tuple(v.shape) for k, v in _meta_open_clip(cfg).state_dict().items()}

        class Shape:
            def __init__(self, shape: tuple[int, ...]) -> None:
                self.shape = shape

        arch = infer_architecture({k: Shape(v) for k, v in shapes.items()}, decided=model_settings(cfg, name))
        assert {k: tuple(v.shape) for k, v in construct_on_meta(arch).state_dict().items()} == shapes, name


# --- refused and bad input --------------------------------------------------------------------------


REFUSED = {
    "vision pool avg": ("vision_cfg", {"pool_type": "avg"}),
    "text pool eos": ("text_cfg", {"pool_type": "eos", "eos_id": 49407}),
    "eos_id of another tokenizer": ("text_cfg", {"pool_type": "eos", "eos_id": 2}),
    "tokenizer": ("text_cfg", {"hf_tokenizer_name": "bert-base-uncased"}),
    "tokenizer kwargs": ("text_cfg", {"tokenizer_kwargs": {"clean": "canonicalize"}}),
    "no causal mask": ("text_cfg", {"no_causal_mask": True}),
    "vision final ln after pool": ("vision_cfg", {"final_ln_after_pool": True}),
    "text final ln after pool": ("text_cfg", {"final_ln_after_pool": True}),
    "act kwargs": ("vision_cfg", {"act_kwargs": {"approximate": "tanh"}}),
    "norm kwargs": ("text_cfg", {"norm_kwargs": {"eps": 1e-6}}),
    "layer scale": ("vision_cfg", {"ls_init_value": 1e-4}),
    "no ln pre": ("vision_cfg", {"no_ln_pre": True}),
    "attentional pool": ("vision_cfg", {"attentional_pool": True}),
    "qk norm": ("vision_cfg", {"qk_norm": True}),
    "text cls token": ("text_cfg", {"embed_cls": True}),
    "text proj bias": ("text_cfg", {"proj_bias": True}),
    "hf text tower": ("text_cfg", {"hf_model_name": "roberta-base"}),
    "timm tower": ("vision_cfg", {"timm_model_name": "vit_base_patch16_224"}),
    "unknown setting": ("vision_cfg", {"rope": True}),
    "logit bias": (None, {"init_logit_bias": -10.0}),
    "coca": (None, {"multimodal_cfg": {"width": 64}}),
    "unknown top setting": (None, {"future_flag": 1}),
    "non-square image": ("vision_cfg", {"image_size": [40, 32]}),
    "non-square patch": ("vision_cfg", {"patch_size": [8, 4]}),
    "three sides": ("vision_cfg", {"image_size": [32, 32, 32]}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_configurations_name_the_file_and_setting(case: str, tmp_path: Path) -> None:
    tower, change = REFUSED[case]
    cfg = copy.deepcopy(CONFIGS["gelu_h80"])
    (cfg[tower] if tower else cfg).update(change)
    folder = write_folder(tmp_path / "refused", cfg, open_clip_model("gelu_h80").state_dict())
    with pytest.raises(ArchitectureError) as info:
        clipfast.load(folder, device="cpu")
    message = str(info.value)
    assert str(folder / "open_clip_config.json") in message
    assert next(iter(change)) in message


def test_resnet_sizes_open_clip_cannot_run_are_refused(tmp_path: Path) -> None:
    """A ModifiedResNet whose image size is a list (open_clip's fails to build: ``size // 32``),
    or is 31 modulo 32 (the feature map is one larger than the attention pool's position table:
    open_clip's fails at the first image): refused naming the setting or the size."""
    weights = open_clip_model("resnet").state_dict()
    listed = write_folder(tmp_path / "listed", _sized("resnet", image_size=[64, 64]), weights)
    with pytest.raises(TypeError):
        reference_load(listed)
    with pytest.raises(ArchitectureError, match=r"open_clip_config\.json.*vision_cfg\.image_size"):
        clipfast.load(listed, device="cpu")
    odd = _sized("resnet", image_size=95)
    with pytest.raises(RuntimeError):
        open_clip_model(odd).encode_image(torch.zeros(1, 3, 95, 95))
    folder = write_folder(tmp_path / "odd", odd, weights)
    with pytest.raises(ArchitectureError, match=r"image size 95 .*open_clip_config\.json.*3x3"):
        clipfast.load(folder, device="cpu")


def test_images_smaller_than_a_patch_are_refused_by_name(tmp_path: Path) -> None:
    """open_clip builds a tower for an image smaller than one patch (32 pixels for a ModifiedResNet):
    its position table is the class token's row alone, and the model fails at its first image.
    clipfast refuses it, saying so (it had said the table's 1 row is not grid**2 + 1)."""
    for name, size in (("gelu_h80", 5), ("resnet", 16)):
        cfg = _sized(name, image_size=size)
        model = open_clip_model(cfg)
        with pytest.raises(RuntimeError):
            model.encode_image(torch.zeros(1, 3, size, size))
        folder = write_folder(tmp_path / name, cfg, model.state_dict())
        reference_load(folder)  # open_clip loads it
        with pytest.raises(
            ArchitectureError, match=r"positional_embedding' has 1 row.*no grid.*smaller than"
        ):
            clipfast.load(folder, device="cpu")


@pytest.mark.parametrize(
    "name", ["ViT-H-14-worldwide", "ViT-L-14-worldwide-quickgelu", "ViT-L-14-CLIPA", "ViT-M-16-alt"]
)
def test_published_configurations_clipfast_cannot_build_are_refused(name: str, tmp_path: Path) -> None:
    """MetaCLIP-2 worldwide (EOS pooling, another tokenizer), CLIPA, layer scale."""
    cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / f"{name}.json").read_text())
    folder = write_folder(tmp_path / name, cfg, open_clip_model("gelu_h80").state_dict())
    with pytest.raises(ArchitectureError, match=r"open_clip_config\.json"):
        clipfast.load(folder, device="cpu")


def test_every_setting_spelled_out_at_open_clips_defaults(tmp_path: Path) -> None:
    """An open_clip_config.json may spell out every CLIPVisionCfg / CLIPTextCfg field (a dump of
    the dataclasses) at open_clip's defaults, vision_cfg.pool_type = "tok" among them: that is the
    model open_clip builds, not a setting to refuse."""
    from dataclasses import asdict

    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    small = CONFIGS["gelu_h80"]
    cfg = {
        **copy.deepcopy(small),
        "vision_cfg": {**asdict(CLIPVisionCfg()), **small["vision_cfg"]},
        "text_cfg": {**asdict(CLIPTextCfg()), **small["text_cfg"]},
    }
    assert cfg["vision_cfg"]["pool_type"] == "tok" and cfg["text_cfg"]["pool_type"] == "argmax"
    folder = write_folder(tmp_path / "spelled_out", cfg, open_clip_model("gelu_h80").state_dict())
    reference, _ = reference_load(folder)
    ours, _ = load_quietly(folder)
    assert_same_outputs(ours, reference)
    assert first_block(ours).attn.num_heads == first_block(reference).attn.num_heads


def test_config_that_disagrees_with_the_weights(tmp_path: Path) -> None:
    cfg = copy.deepcopy(CONFIGS["gelu_h80"])
    cfg["vision_cfg"]["width"] = 192
    folder = write_folder(tmp_path / "wrong", cfg, open_clip_model("gelu_h80").state_dict())
    with pytest.raises(
        ArchitectureError, match=r"open_clip_config\.json says vision_width = 192.*160"
    ) as info:
        clipfast.load(folder, device="cpu")
    assert str(folder / "open_clip_model.safetensors") in str(info.value)
    cfg = copy.deepcopy(CONFIGS["resnet"])  # a ResNet configuration for ViT weights
    folder = write_folder(tmp_path / "kind", cfg, open_clip_model("gelu_h80").state_dict())
    with pytest.raises(ArchitectureError, match="vision_layers"):
        clipfast.load(folder, device="cpu")


def test_bad_folders_and_files(tmp_path: Path) -> None:
    cfg = CONFIGS["gelu_h80"]
    empty = write_folder(tmp_path / "noweights", cfg, {})
    (empty / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no weights") as info:
        clipfast.load(empty, device="cpu")
    assert str(empty) in str(info.value) and isinstance(info.value, FileNotFoundError)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(ModelNotFoundError, match="without a model"):
        clipfast.load(nothing, device="cpu")
    with pytest.raises(ModelNotFoundError, match="local-dir"):
        clipfast.load(f"local-dir:{tmp_path / 'absent'}", device="cpu")
    broken = write_folder(tmp_path / "broken", cfg, open_clip_model("gelu_h80").state_dict())
    (broken / "open_clip_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"open_clip_config\.json"):
        clipfast.load(broken, device="cpu")
    # A file of the wrong format for its name.
    mislabelled = write_folder(tmp_path / "mislabelled", cfg, {})
    torch.save(open_clip_model("gelu_h80").state_dict(), mislabelled / "open_clip_model.safetensors")
    with pytest.raises(CheckpointError) as info:
        clipfast.load(mislabelled, device="cpu")
    assert str(mislabelled / "open_clip_model.safetensors") in str(info.value)
    garbage = write_folder(tmp_path / "garbage", cfg, {}, weights="open_clip_pytorch_model.bin")
    (garbage / "open_clip_pytorch_model.bin").write_bytes(b"\x00" * 1000)
    with pytest.raises(CheckpointError, match=r"open_clip_pytorch_model\.bin"):
        clipfast.load(garbage, device="cpu")


# --- clipfast inspect ------------------------------------------------------------------------------


def _inspect(capsys: pytest.CaptureFixture[str], target: str) -> dict[str, Any]:
    from clipfast import cli

    status = cli.main(["inspect", target, "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    return dict(json.loads(out))


def test_inspect_says_where_each_setting_was_decided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], openai_archive: Any
) -> None:
    model = open_clip_model("gelu_h80")
    folder = write_folder(
        tmp_path / "m", CONFIGS["gelu_h80"], model.state_dict(), preprocess_cfg={"mean": [0.5] * 3}
    )
    config = str(folder / "open_clip_config.json")
    for target in (str(folder), f"local-dir:{folder}", str(folder / "open_clip_model.safetensors")):
        info = _inspect(capsys, target)
        assert info["layout"] == "open_clip" and info["config"] == config
        assert (
            info["architecture"]["vision_heads"] == 2 and info["architecture"]["vision_activation"] == "gelu"
        )
        assert info["architecture"]["vision_mlp_width"] == int(160 * 4.3637)
        assert info["decided_from"]["vision_heads"] == f"config ({config})"
        assert info["decided_from"]["text_activation"] == f"config ({config})"
        assert info["assumed"] == [] and info["preprocess"]["mean"] == [0.5] * 3
    bare = save(tmp_path / "bare.pt", model.state_dict())
    info = _inspect(capsys, str(bare))
    assert info["layout"] == "openai" and info["config"] is None
    assert info["decided_from"]["vision_activation"].startswith("default")
    assert info["decided_from"]["vision_heads"].startswith("default")
    assert info["decided_from"]["vision_mlp_width"] == "shapes"
    assert set(info["assumed"]) == {
        "vision_heads",
        "transformer_heads",
        "vision_activation",
        "text_activation",
    }
    info = _inspect(capsys, str(openai_archive("ViT-B/32")))
    assert info["decided_from"]["vision_heads"].startswith("torchscript")
    assert info["decided_from"]["text_activation"].startswith("torchscript") and info["assumed"] == []
    from clipfast import cli

    refused = copy.deepcopy(CONFIGS["gelu_h80"])
    refused["text_cfg"]["pool_type"] = "eos"
    bad = write_folder(tmp_path / "bad", refused, model.state_dict())
    assert cli.main(["inspect", str(bad), "--json"]) == 2
    assert "pool_type" in json.loads(capsys.readouterr().out)["error"]


def test_converted_safetensors_metadata_decides_and_inspect_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `clipfast convert` records (formats.metadata) is the configuration travelling with the
    weights: no guess, no warning; a later load is the source's model."""
    from clipfast.formats import locate
    from clipfast.formats.metadata import encode
    from safetensors.torch import save_file

    model = open_clip_model("quick_h88")
    folder = write_folder(
        tmp_path / "m", CONFIGS["quick_h88"], model.state_dict(), preprocess_cfg={"std": [0.3] * 3}
    )
    source = locate(str(folder))
    arch = infer_architecture(model.state_dict(), decided=source.decided)
    converted = tmp_path / "converted.safetensors"
    metadata = encode(
        arch, source.preprocess, source=str(folder), source_sha256="ab" * 32, source_format="open_clip"
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(converted), metadata=metadata)
    ours, preprocess = load_quietly(converted)
    assert_same_outputs(ours, model)
    assert preprocess.transforms[-1].std == (0.3, 0.3, 0.3)
    info = _inspect(capsys, str(converted))
    assert info["decided_from"]["vision_heads"] == f"config (the safetensors metadata of {converted})"
    assert info["metadata"]["clipfast.source_format"] == "open_clip"
    assert info["metadata"]["clipfast.source_sha256"] == "ab" * 32
    bad = dict(metadata)
    bad["clipfast.vision_act"] = "swish"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "bad.safetensors"),
        metadata=bad,
    )
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        clipfast.load(tmp_path / "bad.safetensors", device="cpu")


def test_settings_that_used_to_escape_as_type_errors_are_named(tmp_path: Path) -> None:
    """Found by the fault probe: a metadata setting given as a list where a number belongs, and an
    image size beyond int64 (metadata or open_clip_config.json), reached int() or torch.empty on
    the meta device as a TypeError. They are a CheckpointError naming the file."""
    from clipfast.formats.metadata import encode
    from safetensors.torch import save_file

    model = open_clip_model("gelu_h80")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = encode(infer_architecture(state, quick_gelu=False, vision_heads=2))
    settings = json.loads(metadata["clipfast.architecture"])
    for name, value, message in [
        ("context_length", [16], "context_length is a list"),
        ("image_resolution", 10**30, "image position embedding would need"),
    ]:
        path = tmp_path / f"{name}.safetensors"
        bad = dict(metadata, **{"clipfast.architecture": json.dumps(dict(settings, **{name: value}))})
        save_file(state, str(path), metadata=bad)
        with pytest.raises(CheckpointError, match=message) as info:
            clipfast.load(path, device="cpu")
        assert str(path) in str(info.value)
        with pytest.raises(CheckpointError, match=message) as info:
            clipfast.convert(path, tmp_path / "o")
        assert str(path) in str(info.value)
    cfg = copy.deepcopy(CONFIGS["gelu_h80"])
    cfg["vision_cfg"]["image_size"] = 10**30
    folder = write_folder(tmp_path / "huge", cfg, model.state_dict())
    with pytest.raises(CheckpointError, match="image position embedding would need") as info:
        clipfast.load(folder, device="cpu")
    assert str(folder / "open_clip_model.safetensors") in str(info.value)
    assert not (tmp_path / "o").exists()


def test_normalization_that_cannot_work_is_refused_where_it_is_read(tmp_path: Path) -> None:
    """Found by the fault probe: a mean or std of another count than one or three loaded and failed
    at the first image (an untyped RuntimeError), and a zero std or a NaN loaded and gave
    non-finite embeddings. Each is refused naming the file (metadata) or the config; a single
    number stands for all three channels, as open_clip's Normalize broadcasts it."""
    from clipfast.formats.metadata import encode
    from safetensors.torch import save_file

    model = open_clip_model("gelu_h80")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = encode(infer_architecture(state, quick_gelu=False, vision_heads=2))
    bad_values = [
        ({"mean": []}, "mean"),
        ({"mean": [0.5] * 5}, "mean"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"mean": [0.5, float("nan"), 0.5]}, "mean"),
        ({"std": [float("inf")] * 3}, "std"),
    ]
    for index, (values, name) in enumerate(bad_values):
        path = tmp_path / f"bad{index}.safetensors"
        pre = dict(json.loads(metadata.get("clipfast.preprocess", "{}")), **values)
        save_file(state, str(path), metadata=dict(metadata, **{"clipfast.preprocess": json.dumps(pre)}))
        with pytest.raises(CheckpointError, match=rf"{path.name}.*{name}") as info:
            clipfast.load(path, device="cpu")
        assert str(path) in str(info.value)
        cfg = copy.deepcopy(CONFIGS["gelu_h80"])
        cfg_pre = {"mean": [0.5] * 3, "std": [0.25] * 3, **values}
        folder = write_folder(tmp_path / f"folder{index}", cfg, model.state_dict(), preprocess_cfg=cfg_pre)
        with pytest.raises(ArchitectureError, match=rf"open_clip_config.json.*preprocess_cfg.{name}"):
            clipfast.load(folder, device="cpu")
    # One number per statistic: open_clip broadcasts it over the channels, and so does clipfast.
    cfg = copy.deepcopy(CONFIGS["gelu_h80"])
    folder = write_folder(
        tmp_path / "single", cfg, model.state_dict(), preprocess_cfg={"mean": [0.5], "std": [0.25]}
    )
    _, preprocess = clipfast.load(folder, device="cpu")
    _, reference = reference_load(folder)
    image = Image.open(sorted(IMAGES.glob("*.jpg"))[0]).convert("RGB")
    assert torch.equal(preprocess(image), reference(image))


def test_bare_files_of_refused_published_models_are_refused() -> None:
    """A bare MetaCLIP-2 worldwide state dict has OpenAI's names and shapes but pools at another
    tokenizer's EOS: its shapes (vocabulary 901629) say so, and clipfast refuses it."""
    from clipfast.published import REFUSED, derive_refused

    folder = Path(open_clip.__file__).parent / "model_configs"
    configs = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert derive_refused(configs) == REFUSED
    cfg = configs["ViT-H-14-worldwide"]
    shapes = dict(_meta_open_clip(cfg).state_dict())
    with pytest.raises(ArchitectureError, match="ViT-H-14-worldwide"):
        infer_architecture(shapes)


def test_inspect_a_sharded_hugging_face_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipfast import _testing

    spec = _testing.HFSpec(vision_act="gelu", vision_heads=1, vision_width=80, vision_mlp=200)
    folder = _testing.write_hf_folder(tmp_path / "hf", _testing.build_hf_model(spec), max_shard_size=200_000)
    info = _inspect(capsys, str(folder))
    assert info["layout"] == "huggingface" and info["path"].endswith(".index.json")
    assert "shards" in info["format"] and info["tensor_count"] > 0
    assert info["architecture"]["vision_heads"] == 1 and info["architecture"]["vision_activation"] == "gelu"
    assert info["decided_from"]["vision_heads"].startswith("config (") and info["assumed"] == []


def test_resize_waits_for_the_conversion(tmp_path: Path, conversion_held_back: list[int]) -> None:
    """The position embeddings are resized (a step that reads values) only once the conversion has
    filled them: held back until then, a resize that did not wait would resize zeros."""
    weights = {k: v.half() for k, v in open_clip_model("gelu_h80").state_dict().items()}
    cfg = copy.deepcopy(CONFIGS["gelu_h80"])
    cfg["vision_cfg"]["image_size"] = 48  # 4x4 -> 6x6 patches
    cfg["text_cfg"]["context_length"] = 20
    folder = write_folder(tmp_path / "resized", cfg, {k: v.float() for k, v in weights.items()})
    reference, _ = reference_load(folder)
    fp16 = write_folder(tmp_path / "fp16", cfg, weights)  # converted to float32 by the load
    ours, _ = load_quietly(fp16)
    assert conversion_held_back[0] == 1
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=2e-3)
