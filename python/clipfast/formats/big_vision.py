"""big_vision's layout: SigLIP weights as a NumPy ``.npz`` archive (``params/img/...``,
``params/txt/...``, ``params/t``, ``params/b``; the ``params/`` root is optional).

:func:`load_big_vision_weights` loads them into open_clip's ``CustomTextCLIP`` with a timm image
tower (a SigLIP model), as open_clip 3.3's ``load_big_vision_weights`` does: the same arrays, with
the same transposes, go to the same parameters, so the resulting state dict is open_clip's. The
archive is read by clipfast's own reader (stored members are views of the file; nothing is
unpickled), and every array is checked before any parameter changes: an archive without the
expected arrays, a patch grid that does not fit the model, an array of another shape, or a model
that is not such a SigLIP is a typed error naming the file, and the model is left as it was (open_clip
fails with a ``KeyError`` / ``AssertionError`` / ``AttributeError`` half-way through).

Both of big_vision's encoder layouts are read: one array per block (``encoderblock_<i>/...``) and
the scanned form (``encoderblock/...``, the blocks stacked along the first axis). A patch kernel of
another size is resampled to the model's as open_clip does (timm's ``resample_patch_embed``:
bilinear, no antialiasing, through the pseudo-inverse of the resize).

``clipfast.load`` builds OpenAI-structured CLIP models only; a SigLIP ``.npz`` given to it is an
``ArchitectureError`` that says to use ``clipfast.load_checkpoint`` with open_clip's model.

Torch-free at import.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import ArchitectureError, CheckpointError
from . import ModelSource

if TYPE_CHECKING:
    import torch

__all__ = ["is_big_vision", "load_big_vision_weights", "locate"]

#: open_clip's choices for a patch kernel of another size.
_INTERPOLATION = "bilinear"
_ANTIALIAS = False


class _Arrays:
    """The archive's arrays by name; a missing one is a CheckpointError naming the file."""

    def __init__(self, arrays: Mapping[str, torch.Tensor], path: str) -> None:
        self.arrays = arrays
        self.path = path

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __getitem__(self, name: str) -> torch.Tensor:
        array = self.arrays.get(name)
        if array is None and f"params/{name}" in self.arrays:
            raise CheckpointError(
                f"{self.path}: no array {name!r}: the archive's arrays are under 'params/', but "
                "'params/b' (the logit bias, which marks that root) is missing"
            )
        if array is None:
            raise CheckpointError(
                f"{self.path}: no array {name!r}; not big_vision SigLIP weights for this model "
                f"(the archive holds {len(self.arrays)} arrays, e.g. {sorted(self.arrays)[:3]})"
            )
        return array


def _n2p(array: torch.Tensor, transpose: bool = True, index: Optional[int] = None) -> torch.Tensor:
    """big_vision's array as torch lays it out (open_clip's ``_n2p``): one block of a scanned
    stack; a 1x1x1xN kernel flattened; kernels transposed to (out, in, ...) order."""
    if index is not None:
        array = array[index]
    if array.ndim == 4 and array.shape[0] == array.shape[1] == array.shape[2] == 1:
        array = array.flatten()
    if transpose:
        if array.ndim == 4:
            array = array.permute(3, 2, 0, 1)
        elif array.ndim == 3:
            array = array.permute(2, 0, 1)
        elif array.ndim == 2:
            array = array.t()
    return array


def _resample_patch_embed(kernel: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """A patch kernel resampled to ``new_size`` (FlexiViT's pseudo-inverse resize, as timm's
    ``resample_patch_embed`` computes it: float32 resize matrix of the basis vectors, its
    pseudo-inverse, one matrix product)."""
    import torch
    import torch.nn.functional as F

    old_h, old_w = int(kernel.shape[-2]), int(kernel.shape[-1])
    old_total = old_h * old_w
    basis = torch.eye(old_total, dtype=torch.float32).reshape(old_total, 1, old_h, old_w)
    resized = F.interpolate(
        basis, size=new_size, mode=_INTERPOLATION, antialias=_ANTIALIAS, align_corners=False
    )
    matrix = resized.squeeze(1).permute(1, 2, 0).reshape(new_size[0] * new_size[1], old_total)
    pinv = torch.linalg.pinv(matrix)
    c_out, c_in = kernel.shape[:2]
    flat = kernel.reshape(c_out, c_in, -1).to(torch.float32)
    return (flat @ pinv.to(torch.float32)).reshape(c_out, c_in, *new_size).to(kernel.dtype)


class _Plan:
    """The copies to make, each checked before any is made."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.copies: list[tuple[torch.Tensor, torch.Tensor, str]] = []

    def copy(self, target: Any, value: torch.Tensor, what: str) -> None:
        import torch

        if not isinstance(target, torch.Tensor):
            raise ArchitectureError(f"{self.path}: the model has no tensor for {what}")
        try:
            fits = torch.broadcast_shapes(tuple(value.shape), tuple(target.shape)) == tuple(target.shape)
        except RuntimeError:
            fits = False
        if not fits:
            raise ArchitectureError(
                f"{self.path}: {what} has shape {list(value.shape)}, which does not fit the model's "
                f"{list(target.shape)}"
            )
        self.copies.append((target, value, what))

    def run(self) -> None:
        import torch

        with torch.no_grad():
            for target, value, _ in self.copies:
                target.copy_(value)


def _blocks(w: _Arrays, prefix: str, count: int, path: str) -> list[tuple[str, Optional[int]]]:
    """(array prefix, index into the stack) of each of ``count`` encoder blocks, in either layout;
    a warning where the archive has more blocks than the model takes (open_clip ignores them)."""
    if f"{prefix}encoderblock/LayerNorm_0/scale" in w:
        stacked = int(w[f"{prefix}encoderblock/LayerNorm_0/scale"].shape[0])
        if stacked < count:
            raise CheckpointError(
                f"{path}: {prefix}encoderblock holds {stacked} blocks, the model has {count}"
            )
        blocks: list[tuple[str, Optional[int]]] = [(f"{prefix}encoderblock/", i) for i in range(count)]
        found = stacked
    else:
        blocks = [(f"{prefix}encoderblock_{i}/", None) for i in range(count)]
        pattern = re.compile(re.escape(prefix) + r"encoderblock_(\d+)/")
        found = len({m.group(1) for name in w.arrays if (m := pattern.match(name))})
    if found > count:
        warnings.warn(
            f"{path}: {prefix}: the archive has {found} encoder blocks, the model {count}; "
            f"only the first {count} are loaded (as open_clip does)",
            UserWarning,
            stacklevel=4,
        )
    return blocks


def _qkv(w: _Arrays, prefix: str, index: Optional[int], names: tuple[str, ...], kind: str) -> torch.Tensor:
    import torch

    if kind == "kernel":
        return torch.cat([_n2p(w[f"{prefix}{n}/kernel"], False, index).flatten(1).T for n in names])
    return torch.cat([_n2p(w[f"{prefix}{n}/bias"], False, index).reshape(-1) for n in names])


def _image(plan: _Plan, w: _Arrays, trunk: Any, prefix: str) -> None:
    kernel = _n2p(w[f"{prefix}embedding/kernel"])
    proj = trunk.patch_embed.proj
    if kernel.ndim == 4 and tuple(kernel.shape[-2:]) != tuple(proj.weight.shape[-2:]):
        height, width = (int(s) for s in proj.weight.shape[-2:])
        kernel = _resample_patch_embed(kernel, (height, width))
    plan.copy(proj.weight, kernel, f"{prefix}embedding/kernel")
    plan.copy(proj.bias, _n2p(w[f"{prefix}embedding/bias"]), f"{prefix}embedding/bias")
    if getattr(trunk, "cls_token", None) is not None:
        plan.copy(trunk.cls_token, _n2p(w[f"{prefix}cls"], False), f"{prefix}cls")
    pos = _n2p(w[f"{prefix}pos_embedding"], False)
    if tuple(pos.shape) != tuple(trunk.pos_embed.shape):
        raise ArchitectureError(
            f"{plan.path}: {prefix}pos_embedding has shape {list(pos.shape)}, the model's position "
            f"embedding {list(trunk.pos_embed.shape)}: the archive's patch grid does not fit the model "
            "(open_clip does not resize it either)"
        )
    plan.copy(trunk.pos_embed, pos, f"{prefix}pos_embedding")
    for i, (block_prefix, index) in enumerate(
        _blocks(w, f"{prefix}Transformer/", len(trunk.blocks), plan.path)
    ):
        block = trunk.blocks[i]
        mha = f"{block_prefix}MultiHeadDotProductAttention_0/"
        plan.copy(
            block.norm1.weight,
            _n2p(w[f"{block_prefix}LayerNorm_0/scale"], index=index),
            f"{block_prefix}LayerNorm_0/scale",
        )
        plan.copy(
            block.norm1.bias,
            _n2p(w[f"{block_prefix}LayerNorm_0/bias"], index=index),
            f"{block_prefix}LayerNorm_0/bias",
        )
        plan.copy(
            block.attn.qkv.weight,
            _qkv(w, mha, index, ("query", "key", "value"), "kernel"),
            f"{mha}query/key/value kernels",
        )
        plan.copy(
            block.attn.qkv.bias,
            _qkv(w, mha, index, ("query", "key", "value"), "bias"),
            f"{mha}query/key/value biases",
        )
        plan.copy(
            block.attn.proj.weight, _n2p(w[f"{mha}out/kernel"], index=index).flatten(1), f"{mha}out/kernel"
        )
        plan.copy(block.attn.proj.bias, _n2p(w[f"{mha}out/bias"], index=index), f"{mha}out/bias")
        plan.copy(
            block.norm2.weight,
            _n2p(w[f"{block_prefix}LayerNorm_1/scale"], index=index),
            f"{block_prefix}LayerNorm_1/scale",
        )
        plan.copy(
            block.norm2.bias,
            _n2p(w[f"{block_prefix}LayerNorm_1/bias"], index=index),
            f"{block_prefix}LayerNorm_1/bias",
        )
        for r in range(2):
            fc = getattr(block.mlp, f"fc{r + 1}")
            dense = f"{block_prefix}MlpBlock_0/Dense_{r}/"
            plan.copy(fc.weight, _n2p(w[f"{dense}kernel"], index=index), f"{dense}kernel")
            plan.copy(fc.bias, _n2p(w[f"{dense}bias"], index=index), f"{dense}bias")
    plan.copy(
        trunk.norm.weight,
        _n2p(w[f"{prefix}Transformer/encoder_norm/scale"]),
        f"{prefix}Transformer/encoder_norm/scale",
    )
    plan.copy(
        trunk.norm.bias,
        _n2p(w[f"{prefix}Transformer/encoder_norm/bias"]),
        f"{prefix}Transformer/encoder_norm/bias",
    )
    pool = getattr(trunk, "attn_pool", None)
    if pool is not None:
        head = f"{prefix}MAPHead_0/"
        mha = f"{head}MultiHeadDotProductAttention_0/"
        plan.copy(pool.latent, _n2p(w[f"{head}probe"], False), f"{head}probe")
        plan.copy(pool.q.weight, _n2p(w[f"{mha}query/kernel"], False).flatten(1).T, f"{mha}query/kernel")
        plan.copy(pool.q.bias, _n2p(w[f"{mha}query/bias"], False).reshape(-1), f"{mha}query/bias")
        plan.copy(pool.kv.weight, _qkv(w, mha, None, ("key", "value"), "kernel"), f"{mha}key/value kernels")
        plan.copy(pool.kv.bias, _qkv(w, mha, None, ("key", "value"), "bias"), f"{mha}key/value biases")
        plan.copy(pool.proj.weight, _n2p(w[f"{mha}out/kernel"]).flatten(1), f"{mha}out/kernel")
        plan.copy(pool.proj.bias, _n2p(w[f"{mha}out/bias"]), f"{mha}out/bias")
        plan.copy(pool.norm.weight, _n2p(w[f"{head}LayerNorm_0/scale"]), f"{head}LayerNorm_0/scale")
        plan.copy(pool.norm.bias, _n2p(w[f"{head}LayerNorm_0/bias"]), f"{head}LayerNorm_0/bias")
        for r in range(2):
            fc = getattr(pool.mlp, f"fc{r + 1}")
            dense = f"{head}MlpBlock_0/Dense_{r}/"
            plan.copy(fc.weight, _n2p(w[f"{dense}kernel"]), f"{dense}kernel")
            plan.copy(fc.bias, _n2p(w[f"{dense}bias"]), f"{dense}bias")


def _text(plan: _Plan, w: _Arrays, text: Any, prefix: str) -> None:
    import torch

    plan.copy(
        text.token_embedding.weight,
        _n2p(w[f"{prefix}Embed_0/embedding"], False),
        f"{prefix}Embed_0/embedding",
    )
    plan.copy(
        text.positional_embedding,
        _n2p(w[f"{prefix}pos_embedding"], False).squeeze(0),
        f"{prefix}pos_embedding",
    )
    encoder = f"{prefix}Encoder_0/"
    blocks = text.transformer.resblocks
    for i, (block_prefix, index) in enumerate(_blocks(w, encoder, len(blocks), plan.path)):
        block = blocks[i]
        mha = f"{block_prefix}MultiHeadDotProductAttention_0/"
        plan.copy(
            block.ln_1.weight,
            _n2p(w[f"{block_prefix}LayerNorm_0/scale"], index=index),
            f"{block_prefix}LayerNorm_0/scale",
        )
        plan.copy(
            block.ln_1.bias,
            _n2p(w[f"{block_prefix}LayerNorm_0/bias"], index=index),
            f"{block_prefix}LayerNorm_0/bias",
        )
        plan.copy(
            block.attn.in_proj_weight,
            _qkv(w, mha, index, ("query", "key", "value"), "kernel"),
            f"{mha}query/key/value kernels",
        )
        plan.copy(
            block.attn.in_proj_bias,
            _qkv(w, mha, index, ("query", "key", "value"), "bias"),
            f"{mha}query/key/value biases",
        )
        plan.copy(
            block.attn.out_proj.weight,
            _n2p(w[f"{mha}out/kernel"], index=index).flatten(1),
            f"{mha}out/kernel",
        )
        plan.copy(block.attn.out_proj.bias, _n2p(w[f"{mha}out/bias"], index=index), f"{mha}out/bias")
        plan.copy(
            block.ln_2.weight,
            _n2p(w[f"{block_prefix}LayerNorm_1/scale"], index=index),
            f"{block_prefix}LayerNorm_1/scale",
        )
        plan.copy(
            block.ln_2.bias,
            _n2p(w[f"{block_prefix}LayerNorm_1/bias"], index=index),
            f"{block_prefix}LayerNorm_1/bias",
        )
        for r, name in enumerate(("c_fc", "c_proj")):
            linear = getattr(block.mlp, name)
            dense = f"{block_prefix}MlpBlock_0/Dense_{r}/"
            plan.copy(linear.weight, _n2p(w[f"{dense}kernel"], index=index), f"{dense}kernel")
            plan.copy(linear.bias, _n2p(w[f"{dense}bias"], index=index), f"{dense}bias")
    plan.copy(text.ln_final.weight, _n2p(w[f"{encoder}encoder_norm/scale"]), f"{encoder}encoder_norm/scale")
    plan.copy(text.ln_final.bias, _n2p(w[f"{encoder}encoder_norm/bias"]), f"{encoder}encoder_norm/bias")
    projection = getattr(text, "text_projection", None)
    if projection is not None:
        if not isinstance(projection, torch.nn.Linear) or projection.bias is None:
            raise ArchitectureError(
                f"{plan.path}: the model's text projection has no bias, where big_vision's head has "
                "one (open_clip's SigLIP models use a linear projection with a bias)"
            )
        plan.copy(projection.weight, _n2p(w[f"{prefix}head/kernel"]), f"{prefix}head/kernel")
        plan.copy(projection.bias, _n2p(w[f"{prefix}head/bias"]), f"{prefix}head/bias")


def _towers(model: Any, path: str) -> tuple[Any, Any]:
    """The timm trunk and the text tower of an open_clip CustomTextCLIP, else ArchitectureError."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    text = getattr(model, "text", None)
    needed = ("patch_embed", "pos_embed", "blocks", "norm")
    if trunk is None or not all(hasattr(trunk, n) for n in needed) or text is None:
        raise ArchitectureError(
            f"{path}: big_vision SigLIP weights load into open_clip's CustomTextCLIP with a timm "
            f"image tower (e.g. open_clip.create_model('ViT-B-16-SigLIP')), not a {type(model).__name__} "
            "with these towers"
        )
    if not isinstance(getattr(model, "logit_bias", None), _tensor_type()):
        raise ArchitectureError(
            f"{path}: the model has no logit_bias for big_vision's 'b' (a SigLIP model has one)"
        )
    return trunk, text


def _tensor_type() -> type:
    import torch

    return torch.Tensor


def load_big_vision_weights(model: Any, checkpoint_path: Union[str, os.PathLike[str]]) -> None:
    """Load big_vision SigLIP weights (``.npz``) into open_clip's ``CustomTextCLIP`` with a timm
    image tower, as open_clip's ``load_big_vision_weights`` does (see the module). The parameters
    keep their device and dtype. Raises ``CheckpointError`` (a file that is not an ``.npz``
    archive, arrays missing) or ``ArchitectureError`` (a model or a patch grid the weights do not
    fit), naming the file, before any parameter changes."""
    from ..checkpoint import inspect_checkpoint, read_state_dict

    path = os.fspath(checkpoint_path)
    info = inspect_checkpoint(path)
    if info.format != "npz":
        raise CheckpointError(f"{path}: a {info.format} file, not a NumPy .npz archive of big_vision weights")
    trunk, text = _towers(model, path)
    w = _Arrays(read_state_dict(path, mmap=True), path)
    root = "params/" if "params/b" in w else ""
    plan = _Plan(path)
    _image(plan, w, trunk, f"{root}img/")
    _text(plan, w, text, f"{root}txt/")
    plan.copy(model.logit_bias, _first_element(w, f"{root}b", path), f"{root}b")
    plan.copy(model.logit_scale, _first_element(w, f"{root}t", path), f"{root}t")
    plan.run()


def _first_element(w: _Arrays, name: str, path: str) -> torch.Tensor:
    """``array[0]`` as open_clip takes the logit scale and bias; an array without a first element
    (0-d, or empty) is an ArchitectureError naming it, where indexing it fails untyped."""
    value = _n2p(w[name])
    if value.dim() == 0 or value.shape[0] == 0:
        raise ArchitectureError(
            f"{path}: {name} has shape {list(value.shape)}; big_vision stores the logit scale and bias "
            "as one-element arrays ([1])"
        )
    return value[0]


def is_big_vision(path: str) -> bool:
    """Whether ``path`` is in this layout: an ``.npz`` file."""
    return os.path.isfile(path) and path.endswith(".npz")


def locate(path: str) -> Optional[ModelSource]:
    """An ``.npz`` archive is big_vision's; ``clipfast.load`` cannot build its SigLIP model
    (``clipfast inspect`` still describes its tensors, with this error as the architecture's)."""
    if is_big_vision(path):
        raise ArchitectureError(
            f"{path}: a NumPy .npz archive (big_vision SigLIP weights): clipfast.load builds "
            "OpenAI-structured CLIP models; load these into open_clip's SigLIP model with "
            "clipfast.load_checkpoint(model, path)"
        )
    return None
