"""big_vision SigLIP .npz weights into open_clip's CustomTextCLIP (timm image tower): the same state
dict as open_clip's own load_big_vision_weights, in both of big_vision's encoder layouts, and typed
errors where open_clip fails half-way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pytest
import torch
from clipfast.errors import ArchitectureError, CheckpointError
from clipfast.formats.big_vision import load_big_vision_weights

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

WIDTH = 64  # = embed_dim: SigLIP's image tower ends at its MAP head, without a projection


def _register_tiny_vits() -> None:
    """Small SigLIP-like timm ViTs (no class token, MAP pooling), and one with a class token."""
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    variants = {
        "clipfast_test_siglip_p8": {
            "img_size": 64,
            "patch_size": 8,
            "class_token": False,
            "global_pool": "map",
        },
        "clipfast_test_siglip_p16": {
            "img_size": 128,
            "patch_size": 16,
            "class_token": False,
            "global_pool": "map",
        },
        "clipfast_test_vit_cls": {
            "img_size": 64,
            "patch_size": 8,
            "class_token": True,
            "global_pool": "token",
        },
    }
    for name, kwargs in variants.items():
        if name in timm.list_models(name):
            continue

        def make(pretrained: bool = False, _kw: dict[str, Any] = kwargs, **extra: Any) -> VisionTransformer:
            args = {"embed_dim": WIDTH, "depth": 2, "num_heads": 2, "mlp_ratio": 3.0, **_kw}
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's loader options
                extra.pop(key, None)
            return VisionTransformer(**{**args, **extra})

        make.__name__ = name
        register_model(make)


def _siglip(vit: str, seed: int, pool: str = "map") -> Any:
    from open_clip.model import CustomTextCLIP

    _register_tiny_vits()
    torch.manual_seed(seed)
    model = CustomTextCLIP(
        embed_dim=WIDTH,
        vision_cfg={"timm_model_name": vit, "timm_pool": pool, "timm_proj": "none", "image_size": 64},
        text_cfg={
            "context_length": 16,
            "vocab_size": 100,
            "width": WIDTH,
            "heads": 2,
            "layers": 2,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
        init_logit_bias=-10,
    )
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 100)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def _big_vision_arrays(model: Any, root: str = "params/", scanned: bool = False) -> dict[str, np.ndarray]:
    """The model's weights under big_vision's names and layouts (kernels (in, ..., out), attention
    kernels (width, heads, head_dim)), as big_vision's SigLIP checkpoints hold them."""

    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().numpy().copy()

    def heads(weight: torch.Tensor, n: int) -> np.ndarray:  # (out, in) -> (in, heads, head_dim)
        return a(weight.T.reshape(weight.shape[1], n, -1))

    def attention(out: dict[str, np.ndarray], prefix: str, q: Any, k: Any, v: Any, o: Any, n: int) -> None:
        for name, (w, b) in zip(("query", "key", "value"), (q, k, v)):
            out[f"{prefix}{name}/kernel"] = heads(w, n)
            out[f"{prefix}{name}/bias"] = a(b.reshape(n, -1))
        out[f"{prefix}out/kernel"] = a(o.weight.T.reshape(n, -1, o.weight.shape[0]))
        out[f"{prefix}out/bias"] = a(o.bias)

    def encoder(out: dict[str, np.ndarray], prefix: str, blocks: list[dict[str, np.ndarray]]) -> None:
        if scanned:
            for key in blocks[0]:
                out[f"{prefix}encoderblock/{key}"] = np.stack([b[key] for b in blocks])
        else:
            for i, b in enumerate(blocks):
                out.update({f"{prefix}encoderblock_{i}/{key}": value for key, value in b.items()})

    out: dict[str, np.ndarray] = {}
    trunk = model.visual.trunk
    img = f"{root}img/"
    out[f"{img}embedding/kernel"] = a(trunk.patch_embed.proj.weight.permute(2, 3, 1, 0))
    out[f"{img}embedding/bias"] = a(trunk.patch_embed.proj.bias)
    if trunk.cls_token is not None:
        out[f"{img}cls"] = a(trunk.cls_token)
    out[f"{img}pos_embedding"] = a(trunk.pos_embed)
    blocks = []
    for block in trunk.blocks:
        b: dict[str, np.ndarray] = {}
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        n = block.attn.num_heads
        attention(b, "MultiHeadDotProductAttention_0/", (q, qb), (k, kb), (v, vb), block.attn.proj, n)
        for i, norm in enumerate((block.norm1, block.norm2)):
            b[f"LayerNorm_{i}/scale"], b[f"LayerNorm_{i}/bias"] = a(norm.weight), a(norm.bias)
        for i, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            b[f"MlpBlock_0/Dense_{i}/kernel"], b[f"MlpBlock_0/Dense_{i}/bias"] = a(fc.weight.T), a(fc.bias)
        blocks.append(b)
    encoder(out, f"{img}Transformer/", blocks)
    out[f"{img}Transformer/encoder_norm/scale"] = a(trunk.norm.weight)
    out[f"{img}Transformer/encoder_norm/bias"] = a(trunk.norm.bias)
    pool = trunk.attn_pool
    if pool is not None:
        head = f"{img}MAPHead_0/"
        out[f"{head}probe"] = a(pool.latent)
        k, v = pool.kv.weight.chunk(2)
        kb, vb = pool.kv.bias.chunk(2)
        attention(
            out,
            f"{head}MultiHeadDotProductAttention_0/",
            (pool.q.weight, pool.q.bias),
            (k, kb),
            (v, vb),
            pool.proj,
            pool.num_heads,
        )
        out[f"{head}LayerNorm_0/scale"], out[f"{head}LayerNorm_0/bias"] = (
            a(pool.norm.weight),
            a(pool.norm.bias),
        )
        for i, fc in enumerate((pool.mlp.fc1, pool.mlp.fc2)):
            out[f"{head}MlpBlock_0/Dense_{i}/kernel"], out[f"{head}MlpBlock_0/Dense_{i}/bias"] = (
                a(fc.weight.T),
                a(fc.bias),
            )
    text = model.text
    txt = f"{root}txt/"
    out[f"{txt}Embed_0/embedding"] = a(text.token_embedding.weight)
    out[f"{txt}pos_embedding"] = a(text.positional_embedding[None])
    blocks = []
    for block in text.transformer.resblocks:
        b = {}
        q, k, v = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        attention(
            b,
            "MultiHeadDotProductAttention_0/",
            (q, qb),
            (k, kb),
            (v, vb),
            block.attn.out_proj,
            block.attn.num_heads,
        )
        for i, norm in enumerate((block.ln_1, block.ln_2)):
            b[f"LayerNorm_{i}/scale"], b[f"LayerNorm_{i}/bias"] = a(norm.weight), a(norm.bias)
        for i, fc in enumerate((block.mlp.c_fc, block.mlp.c_proj)):
            b[f"MlpBlock_0/Dense_{i}/kernel"], b[f"MlpBlock_0/Dense_{i}/bias"] = a(fc.weight.T), a(fc.bias)
        blocks.append(b)
    encoder(out, f"{txt}Encoder_0/", blocks)
    out[f"{txt}Encoder_0/encoder_norm/scale"] = a(text.ln_final.weight)
    out[f"{txt}Encoder_0/encoder_norm/bias"] = a(text.ln_final.bias)
    out[f"{txt}head/kernel"] = a(text.text_projection.weight.T)
    out[f"{txt}head/bias"] = a(text.text_projection.bias)
    out[f"{root}b"] = a(model.logit_bias.reshape(1))
    out[f"{root}t"] = a(model.logit_scale.reshape(1))
    return out


def _write(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _assert_equal_state(ours: Any, theirs: Any) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("vit", "pool", "root", "scanned", "compressed"),
    [
        ("clipfast_test_siglip_p8", "map", "params/", False, False),
        ("clipfast_test_siglip_p8", "map", "", True, True),
        ("clipfast_test_vit_cls", "token", "params/", True, False),
    ],
)
def test_same_state_dict_as_open_clip(
    tmp_path: Path, vit: str, pool: str, root: str, scanned: bool, compressed: bool
) -> None:
    from open_clip.convert import load_big_vision_weights as reference

    source = _siglip(vit, seed=0, pool=pool)
    path = _write(tmp_path / "w.npz", _big_vision_arrays(source, root, scanned), compressed)
    ours, theirs = _siglip(vit, seed=1, pool=pool), _siglip(vit, seed=1, pool=pool)
    load_big_vision_weights(ours, path)
    reference(theirs, str(path))
    _assert_equal_state(ours, theirs)
    _assert_equal_state(ours, source)  # the round trip through big_vision's layout is exact
    # Through clipfast.load_checkpoint (open_clip's routing), returning {} as open_clip does.
    again = _siglip(vit, seed=1, pool=pool)
    assert clipfast.load_checkpoint(again, str(path)) == {}
    _assert_equal_state(again, theirs)


@pytest.mark.parametrize("compressed", [False, True])
def test_big_endian_archive_gives_open_clips_result_for_the_same_values(
    tmp_path: Path, compressed: bool
) -> None:
    # Arrays stored big-endian ('>f4', '>f2': np.load reads them) were refused ("only little-endian").
    # open_clip's own loader cannot take them (torch.from_numpy refuses the byte order), so the
    # reference is open_clip on the same values stored little-endian.
    from open_clip.convert import load_big_vision_weights as reference

    arrays = _big_vision_arrays(_siglip("clipfast_test_siglip_p8", seed=0))
    swapped = {
        name: value.astype(value.dtype.newbyteorder(">" if i % 3 else "<"))  # mixed orders in one file
        for i, (name, value) in enumerate(arrays.items())
    }
    swapped["params/t"] = swapped["params/t"].astype(">f2")  # float16, the values exact in both
    arrays["params/t"] = arrays["params/t"].astype("<f2")
    little = _write(tmp_path / "little.npz", arrays, compressed)
    big = _write(tmp_path / "big.npz", swapped, compressed)
    assert any(value.dtype.byteorder == ">" for value in np.load(big).values())
    ours, again, theirs = (_siglip("clipfast_test_siglip_p8", seed=1) for _ in range(3))
    load_big_vision_weights(ours, big)
    assert clipfast.load_checkpoint(again, str(big)) == {}
    reference(theirs, str(little))
    _assert_equal_state(ours, theirs)
    _assert_equal_state(again, theirs)


def test_patch_kernel_of_another_size_is_resampled_as_open_clip_does(tmp_path: Path) -> None:
    from open_clip.convert import load_big_vision_weights as reference

    path = _write(tmp_path / "p8.npz", _big_vision_arrays(_siglip("clipfast_test_siglip_p8", seed=0)))
    ours, theirs = _siglip("clipfast_test_siglip_p16", seed=1), _siglip("clipfast_test_siglip_p16", seed=1)
    load_big_vision_weights(ours, path)
    reference(theirs, str(path))
    _assert_equal_state(ours, theirs)


def test_parameters_keep_their_dtype(tmp_path: Path) -> None:
    from open_clip.convert import load_big_vision_weights as reference

    path = _write(tmp_path / "w.npz", _big_vision_arrays(_siglip("clipfast_test_siglip_p8", seed=0)))
    ours, theirs = (
        _siglip("clipfast_test_siglip_p8", seed=1).half(),
        _siglip("clipfast_test_siglip_p8", seed=1).half(),
    )
    load_big_vision_weights(ours, path)
    reference(theirs, str(path))
    assert next(ours.parameters()).dtype == torch.float16
    _assert_equal_state(ours, theirs)


def _unchanged(model: Any, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda a: a.pop("params/txt/head/bias"), CheckpointError, r"no array 'params/txt/head/bias'"),
        (
            lambda a: a.pop("params/b"),
            CheckpointError,
            r"no array 'img/embedding/kernel'.*'params/b'.*missing",
        ),
        (lambda a: a.clear() or a.update(x=np.zeros(3)), CheckpointError, r"no array 'img/embedding/kernel'"),
        (
            lambda a: a.update({"params/img/pos_embedding": np.zeros((1, 17, WIDTH), np.float32)}),
            ArchitectureError,
            r"params/img/pos_embedding has shape \[1, 17, 64\], the model's position embedding \[1, 64, 64\]",
        ),
        (
            lambda a: a.update({"params/txt/Embed_0/embedding": np.zeros((99, WIDTH), np.float32)}),
            ArchitectureError,
            r"params/txt/Embed_0/embedding has shape \[99, 64\], which does not fit the model's \[100, 64\]",
        ),
        # A 0-d logit scale / bias (found by the npz probe: open_clip's loader and clipfast's
        # failed with an untyped IndexError indexing it).
        (
            lambda a: a.update({"params/t": np.float32(2.3)}),
            ArchitectureError,
            r"params/t has shape \[\]; big_vision stores the logit scale and bias as one-element",
        ),
        (
            lambda a: a.update({"params/b": np.zeros(0, np.float32)}),
            ArchitectureError,
            r"params/b has shape \[0\]",
        ),
    ],
)
def test_bad_archives_are_typed_errors_and_change_nothing(
    tmp_path: Path, damage: Callable[[dict[str, np.ndarray]], Any], error: type, message: str
) -> None:
    arrays = _big_vision_arrays(_siglip("clipfast_test_siglip_p8", seed=0))
    damage(arrays)
    path = _write(tmp_path / "bad.npz", arrays)
    model = _siglip("clipfast_test_siglip_p8", seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=rf"bad\.npz: .*{message}"):
        load_big_vision_weights(model, path)
    _unchanged(model, before)


def test_models_that_are_not_siglip_and_files_that_are_not_npz(tmp_path: Path) -> None:
    path = _write(tmp_path / "w.npz", _big_vision_arrays(_siglip("clipfast_test_siglip_p8", seed=0)))
    clip_model = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(
        ArchitectureError, match=r"w\.npz: big_vision SigLIP weights load into open_clip's CustomTextCLIP"
    ):
        load_big_vision_weights(clip_model, path)
    no_bias = _siglip("clipfast_test_siglip_p8", seed=1)
    del no_bias.logit_bias
    no_bias.logit_bias = None
    with pytest.raises(ArchitectureError, match=r"w\.npz: the model has no logit_bias"):
        load_big_vision_weights(no_bias, path)
    npy = tmp_path / "w.npy"
    np.save(npy, np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match=r"w\.npy: an \.npy file holds one array"):
        clipfast.load_checkpoint(_siglip("clipfast_test_siglip_p8", seed=1), str(npy))
    with pytest.raises(
        ArchitectureError, match=r"w\.npz: a NumPy \.npz archive \(big_vision SigLIP weights\)"
    ):
        clipfast.load(str(path), device="cpu")


def test_extra_encoder_blocks_are_warned_about(tmp_path: Path) -> None:
    arrays = _big_vision_arrays(_siglip("clipfast_test_siglip_p8", seed=0), scanned=True)
    stacked = [k for k in arrays if "img/Transformer/encoderblock/" in k]
    for key in stacked:
        arrays[key] = np.concatenate([arrays[key], arrays[key][:1]])
    path = _write(tmp_path / "deeper.npz", arrays)
    with pytest.warns(
        UserWarning, match=r"deeper\.npz: params/img/Transformer/: the archive has 3 encoder blocks"
    ):
        load_big_vision_weights(_siglip("clipfast_test_siglip_p8", seed=1), path)
