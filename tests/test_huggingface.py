"""Hugging Face CLIPModel folders: clipfast.load gives transformers' features (generated models of
several shapes, GELU and QuickGELU, head widths other than 64), every storage layout, hf-hub: from
the cache, open_clip's files preferred where both sit in one folder, and typed errors."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clipfast
import pytest
import torch
from clipfast import _testing
from clipfast._testing import HFSpec
from clipfast.errors import ArchitectureError, CheckpointError, ModelNotFoundError
from clipfast.formats import huggingface
from hf_cache import write_cached_repo

pytest.importorskip("transformers")

SPECS = {
    # QuickGELU in both towers (transformers' default), 32-wide heads.
    "quickgelu": HFSpec(),
    # GELU, 80-wide vision heads, MLPs not 4x, 3x3 patch grid.
    "gelu-80": HFSpec(
        vision_width=160, vision_heads=2, vision_mlp=600, vision_act="gelu", image_size=48,
        text_width=96, text_heads=3, text_mlp=200, text_act="gelu", projection_dim=24,
    ),
    # One of each activation, 88-wide vision heads, 104-wide text heads, a smaller vocabulary.
    "mixed-88-104": HFSpec(
        vision_width=176, vision_heads=2, vision_mlp=352, vision_act="gelu", patch_size=32,
        text_width=104, text_heads=1, text_mlp=300, text_act="quick_gelu", vocab_size=1000,
        context_length=40,
    ),
    # An image size between two multiples of the patch: transformers floors the grid (4x4 here).
    "between-patches": HFSpec(image_size=72),
}  # fmt: skip


@pytest.fixture(scope="session")
def hf_model() -> Callable[[str], Any]:
    cache: dict[str, Any] = {}

    def make(name: str) -> Any:
        if name not in cache:
            cache[name] = _testing.build_hf_model(SPECS[name], seed=len(cache))
        return cache[name]

    return make


@pytest.fixture(scope="session")
def hf_folder(
    hf_model: Callable[[str], Any], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """(spec name, **write_hf_folder arguments) -> a folder written once."""
    cache: dict[tuple[Any, ...], Path] = {}

    def make(name: str, **kwargs: Any) -> Path:
        key = (name, *sorted((k, json.dumps(v, sort_keys=True)) for k, v in kwargs.items()))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"hf-{name}")
            cache[key] = _testing.write_hf_folder(folder, hf_model(name), **kwargs)
        return cache[key]

    return make


def _inputs(s: HFSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(3, 3, s.image_size, s.image_size, generator=gen)
    text = torch.randint(1, s.vocab_size - 2, (3, s.context_length), generator=gen)
    for row, end in enumerate((5, s.context_length // 2, s.context_length - 1)):
        text[row, end] = s.vocab_size - 1  # the end-of-text token: the largest id
        text[row, end + 1 :] = 0
    return image, text


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _assert_same_features(model: Any, reference: Any, s: HFSpec) -> None:
    image, text = _inputs(s)
    with torch.no_grad():
        ours_image = model.encode_image(image)
        ours_text = model.encode_text(text)
        theirs_image = reference.get_image_features(pixel_values=image).pooler_output
        theirs_text = reference.get_text_features(input_ids=text).pooler_output
        logits, _ = model(image, text)
        theirs_logits = reference(input_ids=text, pixel_values=image).logits_per_image
    assert ours_image.dtype == torch.float32 and ours_image.shape == theirs_image.shape
    assert _relative(ours_image, theirs_image) < 1e-5
    assert _relative(ours_text, theirs_text) < 1e-5
    assert _relative(logits, theirs_logits) < 1e-5


@pytest.mark.parametrize("name", list(SPECS))
def test_folder_gives_transformers_features(
    name: str, hf_model: Callable[[str], Any], hf_folder: Callable[..., Path]
) -> None:
    s = SPECS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the configuration decides everything: no assumption warned about
        model, _ = clipfast.load(str(hf_folder(name)), device="cpu")
    _assert_same_features(model, hf_model(name), s)
    assert model.visual.transformer.resblocks[0].attn.num_heads == s.vision_heads
    assert model.transformer.resblocks[0].attn.num_heads == s.text_heads


def test_image_smaller_than_a_patch_is_refused_by_name(tmp_path: Path) -> None:
    """transformers builds a CLIPModel whose image is smaller than one patch (a position table of
    the class token's row alone) and fails at its first image; clipfast refuses the folder, saying
    so (it had said the configuration does not fit the weights)."""
    s = HFSpec(image_size=10, vision_layers=1, text_layers=1, context_length=8)
    model = _testing.build_hf_model(s)
    with pytest.raises(RuntimeError):
        model.get_image_features(pixel_values=torch.zeros(1, 3, 10, 10))
    folder = _testing.write_hf_folder(tmp_path / "small", model)
    with pytest.raises(
        ArchitectureError,
        match=r"config\.json: vision_config\.image_size = 10 is smaller than one 16-pixel patch",
    ):
        clipfast.load(str(folder), device="cpu")


@pytest.mark.parametrize(
    ("weights", "shard"),
    [("safetensors", "100KB"), ("bin", None), ("bin", 3)],
)
def test_every_storage_layout(
    weights: str, shard: Any, hf_model: Callable[[str], Any], hf_folder: Callable[..., Path]
) -> None:
    folder = hf_folder("gelu-80", weights=weights, max_shard_size=shard)
    if shard is not None:
        index = next(folder.glob("*.index.json"))
        assert len(json.loads(index.read_text())["weight_map"]) > 0
        assert len({*json.loads(index.read_text())["weight_map"].values()}) > 1
    model, _ = clipfast.load(str(folder), device="cpu")
    _assert_same_features(model, hf_model("gelu-80"), SPECS["gelu-80"])


def test_a_file_or_index_inside_the_folder_takes_its_configuration(
    hf_model: Callable[[str], Any], hf_folder: Callable[..., Path]
) -> None:
    reference = hf_model("mixed-88-104")
    for path in (
        hf_folder("mixed-88-104") / "model.safetensors",
        next(hf_folder("mixed-88-104", max_shard_size="200KB").glob("*.index.json")),
        hf_folder("mixed-88-104", weights="bin") / "pytorch_model.bin",
    ):
        model, _ = clipfast.load(str(path), device="cpu")
        _assert_same_features(model, reference, SPECS["mixed-88-104"])


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("dtype", [None, torch.float16, torch.float64])
def test_dtypes_and_mmap(mmap: bool, dtype: Any, hf_folder: Callable[..., Path]) -> None:
    folder = hf_folder("quickgelu")
    model, _ = clipfast.load(str(folder), device="cpu", dtype=dtype, mmap=mmap)
    reference, _ = clipfast.load(str(folder), device="cpu")
    for (key, ours), (_, fp32) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert ours.is_contiguous(), key
        if dtype == torch.float16:
            expected = torch.float16 if key in clipfast.model.half_precision_names(model) else torch.float32
        else:
            expected = dtype or torch.float32
        assert ours.dtype == expected, key
        assert torch.equal(ours.to(fp32.dtype), fp32.to(ours.dtype).to(fp32.dtype)), key


def test_preprocess_from_preprocessor_config(hf_folder: Callable[..., Path]) -> None:
    from clipfast.transforms import CenterCrop, Normalize, Resize

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    folder = hf_folder(
        "quickgelu",
        preprocessor={
            "size": {"shortest_edge": 64},
            "crop_size": {"height": 64, "width": 64},
            "image_mean": mean,
            "image_std": std,
            "resample": 2,
        },
    )
    _, preprocess = clipfast.load(str(folder), device="cpu")
    resize, crop, _, _, normalize = preprocess.transforms
    assert isinstance(resize, Resize) and resize.size == 64 and int(resize.interpolation) == 2
    assert isinstance(crop, CenterCrop) and crop.size == (64, 64)
    assert isinstance(normalize, Normalize) and normalize.mean == tuple(mean) and normalize.std == tuple(std)
    _, default = clipfast.load(str(hf_folder("quickgelu")), device="cpu")
    assert default.transforms[-1].mean == clipfast.transforms.MEAN


@pytest.mark.parametrize(
    "values",
    [{"image_mean": [0.5, float("nan"), 0.5]}, {"image_std": [float("inf")] * 3}, {"image_std": [0.2] * 2}],
)
def test_normalization_that_cannot_work_is_refused(
    values: dict[str, Any], hf_folder: Callable[..., Path], tmp_path: Path
) -> None:
    """A non-finite or missing statistic would make every embedding NaN or fail at the first
    image: refused naming preprocessor_config.json."""
    folder = _copy(hf_folder("quickgelu"), tmp_path)
    (folder / "preprocessor_config.json").write_text(json.dumps(values))
    name = next(iter(values))
    with pytest.raises(ArchitectureError, match=rf"preprocessor_config.json: {name} .*finite"):
        clipfast.load(str(folder), device="cpu")


def test_preprocess_equals_transformers_pil_processor_up_to_the_crop_offset(
    hf_folder: Callable[..., Path],
) -> None:
    """transformers' PIL image processor resizes as clip does, with the configuration's constants;
    it floors the centre crop's offset where torchvision (clip, open_clip, clipfast) rounds it:
    on an image whose margins are even, the pixels agree."""
    import numpy as np
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    config = {
        "size": {"shortest_edge": 64},
        "crop_size": {"height": 64, "width": 64},
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
    }
    _, preprocess = clipfast.load(str(hf_folder("quickgelu", preprocessor=config)), device="cpu")
    image = Image.fromarray((np.random.default_rng(0).random((100, 125, 3)) * 255).astype(np.uint8))
    theirs = CLIPImageProcessorPil(**config)(images=image, return_tensors="pt")["pixel_values"][0]
    assert _relative(preprocess(image), theirs) < 1e-6


def test_transformers_resolves_tower_settings_as_clipfast_reads_them() -> None:
    from transformers import CLIPConfig

    configs = [
        {"text_config": {"hidden_act": "gelu", "hidden_size": 96}, "vision_config": {}},
        {"text_config_dict": {"hidden_size": 80}, "text_config": {"hidden_act": "gelu", "hidden_size": 64}},
        {
            "vision_config_dict": {"hidden_act": "gelu"},
            "vision_config": {"hidden_size": 64, "patch_size": 14},
        },
        {},
    ]
    for config in configs:
        reference = CLIPConfig.from_dict({"model_type": "clip", **config})
        for tower, ref in (("text", reference.text_config), ("vision", reference.vision_config)):
            ours = huggingface.tower_config(config, tower, "config.json")
            for key, value in ours.items():
                assert getattr(ref, key) == value, (config, tower, key)


def test_hub_name_of_a_cached_hf_repository(
    hf_model: Callable[[str], Any],
    hf_folder: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = hf_folder("gelu-80", max_shard_size="100KB")
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    files["README.md"] = Path(__file__)  # an unrelated file of the repository
    write_cached_repo(tmp_path, "org/clip-hf", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = clipfast.load("hf-hub:org/clip-hf", device="cpu")
    _assert_same_features(model, hf_model("gelu-80"), SPECS["gelu-80"])
    # A shard missing from the cache: a typed error naming the index and the shard.
    snapshot = next((tmp_path / "models--org--clip-hf" / "snapshots").iterdir())
    shard = sorted(snapshot.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(
        CheckpointError, match=rf"model.safetensors.index.json: names shard '{shard.name}', which is missing"
    ):
        clipfast.load("hf-hub:org/clip-hf", device="cpu")
    with pytest.raises(ModelNotFoundError, match="hf-hub:org/other is not in the Hugging Face cache"):
        clipfast.load("hf-hub:org/other", device="cpu")


def test_open_clip_files_win_where_both_sit_in_one_folder(
    hf_model: Callable[[str], Any], hf_folder: Callable[..., Path], tmp_path: Path
) -> None:
    """LAION's repositories ship both: open_clip's configuration and weights are used, and both
    give the same numbers (as transformers' and open_clip's own models do)."""
    import open_clip
    from safetensors.torch import save_file

    s = SPECS["gelu-80"]
    reference = hf_model("gelu-80")
    from_hf, _ = clipfast.load(str(hf_folder("gelu-80")), device="cpu")
    folder = tmp_path / "both"
    shutil.copytree(hf_folder("gelu-80"), folder)
    model_cfg = {
        "embed_dim": s.projection_dim,
        "quick_gelu": False,
        "vision_cfg": {"image_size": s.image_size, "layers": s.vision_layers, "width": s.vision_width,
                       "head_width": s.vision_width // s.vision_heads, "patch_size": s.patch_size,
                       "mlp_ratio": s.vision_mlp / s.vision_width},
        "text_cfg": {"context_length": s.context_length, "vocab_size": s.vocab_size, "width": s.text_width,
                     "heads": s.text_heads, "layers": s.text_layers, "mlp_ratio": s.text_mlp / s.text_width},
    }  # fmt: skip
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in from_hf.state_dict().items()}, folder / "open_clip_model.safetensors"
    )
    both, preprocess = clipfast.load(str(folder), device="cpu")
    assert preprocess.transforms[-1].mean == (0.1, 0.2, 0.3)  # open_clip's configuration was used
    _assert_same_features(both, reference, s)
    theirs, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    image, text = _inputs(s)
    with torch.no_grad():
        assert _relative(both.encode_image(image), theirs.eval().encode_image(image)) < 1e-5
        assert _relative(both.encode_text(text), theirs.encode_text(text)) < 1e-5


def test_bare_safetensors_with_transformers_names(
    hf_model: Callable[[str], Any], hf_folder: Callable[..., Path], tmp_path: Path
) -> None:
    """No config.json: the shapes decide, and what they cannot show is assumed, with a warning."""
    bare = tmp_path / "clip.safetensors"
    shutil.copy(hf_folder("quickgelu") / "model.safetensors", bare)
    with pytest.warns(UserWarning, match="quick_gelu"):
        model, _ = clipfast.load(str(bare), device="cpu", vision_heads=2, transformer_heads=2)
    _assert_same_features(model, hf_model("quickgelu"), SPECS["quickgelu"])


def test_openai_names_beside_a_config_json_say_it_was_not_used(
    hf_folder: Callable[..., Path], state_dict_file: Callable[[str], Path], tmp_path: Path
) -> None:
    """A file with OpenAI's tensor names in a Hugging Face folder: its config.json describes
    transformers' names, so it is not used (as clip.load ignores it), and the warning about the
    assumed settings says so, where it said that no configuration travels with the weights."""
    import clip

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(hf_folder("quickgelu") / "config.json", folder / "config.json")
    weights = folder / "ViT-B-32.pt"
    shutil.copy(state_dict_file("ViT-B/32"), weights)
    with pytest.warns(UserWarning, match="quick_gelu") as record:
        model, _ = clipfast.load(str(weights), device="cpu")
    (message,) = [str(w.message) for w in record if "quick_gelu" in str(w.message)]
    assert message.startswith(f"{weights}: these weights are in OpenAI's layout")
    assert f"the config.json beside them ({folder / 'config.json'}) was not used" in message
    assert "only with weights under Hugging Face's tensor names" in message
    assert "no configuration travels with these weights" not in message
    assert "or config.json beside the file" not in message  # it would not be read either
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, _ = clip.load(str(weights), device="cpu", jit=False)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # clipfast convert warns the same way; a file alone keeps the plain wording.
    with pytest.warns(UserWarning, match=r"config\.json beside them .* was not used"):
        clipfast.convert(str(weights), str(tmp_path / "out.safetensors"))
    alone = tmp_path / "ViT-B-32.pt"
    shutil.copy(weights, alone)
    with pytest.warns(
        UserWarning, match=r"ViT-B-32\.pt: no configuration travels with these weights"
    ) as record:
        clipfast.load(str(alone), device="cpu")
    # Nor does it suggest a config.json there: beside weights in OpenAI's layout none is read.
    (alone_message,) = [str(w.message) for w in record if "quick_gelu" in str(w.message)]
    assert "config.json beside" not in alone_message.replace("open_clip_config.json beside", "")


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_a_lone_file_with_transformers_names_says_what_it_needs(
    weights: str, hf_folder: Callable[..., Path], tmp_path: Path
) -> None:
    """A transformers file taken out of its folder: the error says the config.json is what is
    missing (a .bin file, or one tower alone, is not read as bare transformers weights)."""
    source = hf_folder("quickgelu", weights="bin" if weights.endswith(".bin") else "safetensors")
    lone = tmp_path / weights
    if weights.endswith(".bin"):
        shutil.copy(source / weights, lone)
    else:  # one tower: the text tower's tensors only
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(source / weights))
        save_file({k: v for k, v in tensors.items() if k.startswith("text_model.")}, str(lone))
    with pytest.raises(
        ArchitectureError, match=rf"{weights}: tensors named as in transformers'.*config.json"
    ):
        clipfast.load(str(lone), device="cpu")


# --- bad input -----------------------------------------------------------------------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def _edit_config(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["text_config"].update(hidden_act="gelu_new"), r"text_config.hidden_act = \"gelu_new\""),
        (lambda c: c["vision_config"].update(hidden_act="relu"), r"vision_config.hidden_act = \"relu\""),
        # Not a string (a TypeError, "unhashable type", before the probe found it).
        (lambda c: c["text_config"].update(hidden_act=["gelu"]), r"text_config.hidden_act = \[\"gelu\"\]"),
        (lambda c: c["vision_config"].update(hidden_act={"a": 1}), r"vision_config.hidden_act = \{"),
        (lambda c: c["vision_config"].update(layer_norm_eps=1e-6), r"vision_config.layer_norm_eps = 1e-06"),
        (lambda c: c["text_config"].update(eos_token_id=7), r"text_config.eos_token_id = 7"),
        (lambda c: c.update(model_type="siglip"), r"model_type = \"siglip\" \(not a CLIPModel\)"),
        (lambda c: c.update(model_type="clip_vision_model"), r"a single tower"),
        (lambda c: c["vision_config"].update(num_channels=1), r"num_channels = 1"),
        (
            lambda c: c["vision_config"].update(hidden_size=80),
            r"says vision_width = 80, but the weights have 64",
        ),
        (lambda c: c["text_config"].update(num_hidden_layers=3), r"says transformer_layers = 3"),
        (lambda c: c["vision_config"].update(image_size=96), r"vision_config.image_size = 96 does not fit"),
        (
            lambda c: c["text_config"].update(max_position_embeddings=70),
            r"max_position_embeddings = 70 does not fit",
        ),
        (
            lambda c: c["text_config"].update(num_attention_heads=3),
            r"num_attention_heads = 3 does not divide",
        ),
    ],
)
def test_configurations_refused_naming_config_json(
    edit: Callable[[dict[str, Any]], None], message: str, hf_folder: Callable[..., Path], tmp_path: Path
) -> None:
    folder = _copy(hf_folder("quickgelu"), tmp_path)
    _edit_config(folder, edit)
    with pytest.raises(ArchitectureError, match=rf"config.json\b.*{message}"):
        clipfast.load(str(folder), device="cpu")


def test_folder_without_weights(hf_folder: Callable[..., Path], tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(hf_folder("quickgelu") / "config.json", folder)
    with pytest.raises(
        ModelNotFoundError, match=r"empty: a Hugging Face folder \(config.json\) without weights"
    ):
        clipfast.load(str(folder), device="cpu")


def test_sharded_index_faults(hf_folder: Callable[..., Path], tmp_path: Path) -> None:
    folder = _copy(hf_folder("quickgelu", max_shard_size="100KB"), tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    (folder / shards[0]).unlink()
    with pytest.raises(CheckpointError, match=rf"index.json: names shard '{shards[0]}', which is missing"):
        clipfast.load(str(folder), device="cpu")
    # A shard outside the folder is never read, even where the file exists.
    (tmp_path / "outside.safetensors").write_bytes((folder / shards[1]).read_bytes())
    for escape in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "sub/x.safetensors"):
        bad = dict(index, weight_map={k: escape for k in index["weight_map"]})
        index_path.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="not a file name in the index's folder"):
            clipfast.load(str(folder), device="cpu")
    # The index puts a tensor in a shard that does not hold it.
    wrong = dict(index["weight_map"])
    key = next(k for k, v in wrong.items() if v == shards[1])
    wrong[key] = shards[-1]
    shutil.copy(hf_folder("quickgelu", max_shard_size="100KB") / shards[0], folder / shards[0])
    index_path.write_text(json.dumps(dict(index, weight_map=wrong)))
    with pytest.raises(CheckpointError, match=rf"the index puts \['{key}'\] in {shards[-1]}"):
        clipfast.load(str(folder), device="cpu")
    index_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"index\.json: not a readable shard index"):
        clipfast.load(str(folder), device="cpu")


def test_weights_of_another_model(hf_folder: Callable[..., Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(hf_folder("quickgelu"), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["vision_model.head.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"tensors \['vision_model.head.weight'\] are not a transformers CLIPModel's"
    ):
        clipfast.load(str(folder), device="cpu")
    del tensors["vision_model.head.weight"], tensors["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"in_proj_weight needs q, k and v projections; k_proj missing"):
        clipfast.load(str(folder), device="cpu")


def test_parsers_are_total_over_bytes() -> None:
    """The fuzzing entry points: any bytes give a value or a typed error, never another exception."""
    import random

    rng = random.Random(0)
    seeds = [
        b'{"weight_map": {"a": "model-1.safetensors"}}',
        json.dumps(
            {"text_config": {"hidden_act": "gelu"}, "vision_config": {}, "model_type": "clip"}
        ).encode(),
    ]
    for _ in range(2000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            huggingface.parse_shard_index(bytes(data), "index.json")
        except CheckpointError:
            pass
        try:
            huggingface.model_settings(huggingface.parse_config(bytes(data), "config.json"), "config.json")
        except (CheckpointError, ArchitectureError):
            pass


def test_bin_with_strided_and_shared_storage_tensors(hf_model: Callable[[str], Any], tmp_path: Path) -> None:
    """torch.save keeps views: q/k/v slices of one fused storage (offsets), transposed weights."""
    model = hf_model("gelu-80")
    folder = tmp_path / "views"
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(SPECS["gelu-80"].vision_layers):
        prefix = f"vision_model.encoder.layers.{i}.self_attn."
        fused = torch.cat([state[f"{prefix}{n}_proj.weight"] for n in "qkv"])
        for n, part in zip("qkv", fused.chunk(3)):
            state[f"{prefix}{n}_proj.weight"] = part  # a view at an offset of one storage
    state["visual_projection.weight"] = state["visual_projection.weight"].t().contiguous().t()
    state["text_model.encoder.layers.0.mlp.fc1.weight"] = (
        state["text_model.encoder.layers.0.mlp.fc1.weight"].t().contiguous().t()
    )
    torch.save(state, folder / "pytorch_model.bin")
    for mmap in (False, True):
        ours, _ = clipfast.load(str(folder), device="cpu", mmap=mmap)
        _assert_same_features(ours, model, SPECS["gelu-80"])
    converted = tmp_path / "converted.safetensors"
    clipfast.convert(str(folder), str(converted))
    ours, _ = clipfast.load(str(converted), device="cpu")
    _assert_same_features(ours, model, SPECS["gelu-80"])


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_a_file_renamed_over_the_weights_after_the_parse_is_not_read(
    weights: str,
    hf_model: Callable[[str], Any],
    hf_folder: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another model's weights (same shapes) renamed over the file just after clipfast parsed it:
    the tensors kept as views of the map and those converted both come from the parsed file, so the
    model is the reference model of that file (a second read by the path mixed in the new one)."""
    from clipfast import checkpoint

    folder = _copy(hf_folder("quickgelu", weights=weights), tmp_path)
    other = _testing.write_hf_folder(
        tmp_path / "other", _testing.build_hf_model(SPECS["quickgelu"], seed=99), weights=weights
    )
    name = "model.safetensors" if weights == "safetensors" else "pytorch_model.bin"
    real_open = checkpoint._open
    published: list[str] = []

    def parse_then_publish(file: str) -> Any:
        reader = real_open(file)
        if not published and Path(file) == folder / name:
            os.replace(other / name, file)
            published.append(file)
        return reader

    monkeypatch.setattr(checkpoint, "_open", parse_then_publish)
    model, _ = clipfast.load(str(folder), device="cpu", mmap=True)
    assert published
    _assert_same_features(model, hf_model("quickgelu"), SPECS["quickgelu"])


def test_hub_download_fetches_only_what_the_load_needs(
    hf_model: Callable[[str], Any],
    hf_folder: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An HF-only repository on a local stand-in hub: the config, the preprocessor config, the index
    and its shards are downloaded (nothing else the repository holds), into Hugging Face's cache."""
    from hf_cache import FakeHub
    from huggingface_hub import constants

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CLIPFAST_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    folder = hf_folder("quickgelu", max_shard_size="100KB", preprocessor={"image_mean": [0.5, 0.5, 0.5]})
    files: dict[str, Any] = {p.name: p for p in folder.iterdir() if p.is_file()}
    files["tf_model.h5"] = b"not needed"
    hub = FakeHub()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub.publish("org/clip", files)
        model, preprocess = clipfast.load("hf-hub:org/clip", device="cpu")
    finally:
        hub.stop()
    _assert_same_features(model, hf_model("quickgelu"), SPECS["quickgelu"])
    assert preprocess.transforms[-1].mean == (0.5, 0.5, 0.5)
    fetched = {
        path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET" and "/resolve/" in path
    }
    shards = {name for name in files if name.startswith("model-")}
    assert fetched == {"config.json", "preprocessor_config.json", "model.safetensors.index.json", *shards}
    # The hub unreachable now (downloads not turned off): the repository loads from the cache, as
    # transformers' from_pretrained loads it, though open_clip_config.json was never cached.
    import types

    from huggingface_hub.utils import _http
    from transformers import CLIPModel

    monkeypatch.setattr(_http, "time", types.SimpleNamespace(**{**vars(_http.time), "sleep": lambda s: None}))
    again, _ = clipfast.load("hf-hub:org/clip", device="cpu")
    reference = CLIPModel.from_pretrained("org/clip", cache_dir=str(tmp_path / "cache")).eval()
    _assert_same_features(again, reference, SPECS["quickgelu"])


def test_weights_only_false_reads_hf_folders_too(
    hf_model: Callable[[str], Any], hf_folder: Callable[..., Path]
) -> None:
    model, _ = clipfast.load(str(hf_folder("quickgelu", weights="bin")), device="cpu", weights_only=False)
    _assert_same_features(model, hf_model("quickgelu"), SPECS["quickgelu"])
