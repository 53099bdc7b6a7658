"""open_clip's ``load_state_dict`` / ``load_checkpoint``: a checkpoint file into a model that exists.

``load_checkpoint(model, path, strict, weights_only, device)`` follows open_clip 3.3's contract
(``factory.load_checkpoint``): the same state dict reaches ``model.load_state_dict`` and the same
incompatible keys come back, for open_clip's ``CLIP`` / ``CustomTextCLIP`` and for clipfast's (and
openai/CLIP's) ``CLIP``. The steps, in open_clip's order:

1. ``.npz`` (big_vision SigLIP weights) -> ``formats.big_vision.load_big_vision_weights``, returns ``{}``;
2. read the file (``load_state_dict``): the weights at the top or under ``"state_dict"`` (clipfast
   also reads ``"model"``, and TorchScript archives without running them, minus their
   ``input_resolution`` / ``context_length`` / ``vocab_size`` buffers); every key loses its first
   seven characters when the first key starts with ``module`` (DataParallel's prefix);
3. open_clip's third-party conversion (Apple's MobileCLIP, through timm, as open_clip does);
4. OpenAI's text layout moved under ``text.`` for a model whose text tower is ``model.text``
   (CustomTextCLIP), and, into clipfast's CLIP only, the reverse;
5. ``logit_scale`` / ``logit_bias`` reshaped to the model's (scalar or one element); a zero
   ``logit_bias`` where the model has one and the file has none;
6. ``text.transformer.embeddings.position_ids`` dropped;
7. the image position embedding resized to the model's grid (bicubic, antialiased, one class
   token) and the text one to its context length (linear);
8. ``model.load_state_dict(state_dict, strict=strict)``: values are copied into the model's own
   parameters, which keep their device and dtype.

Where open_clip fails with an ``AttributeError`` / ``AssertionError`` / a pickle that needs
``weights_only=False``, clipfast raises a typed error naming the file (``CheckpointError``,
``ArchitectureError``, both ``ValueError``), or reads the file: TorchScript archives, weights under
``"model"``. A model that is not a whole CLIP (a wrapper holding one, a single tower) is refused, as
open_clip fails on its missing ``logit_scale`` / ``logit_bias``; clipfast's and openai/CLIP's
``CLIP``, which have no ``logit_bias``, are loaded. No pickle code runs unless
``weights_only=False`` (then ``torch.load`` reads the file, as open_clip does, for files you trust).
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Union

from .arch import ARCHIVE_ONLY_KEYS, CUSTOM_TEXT_KEYS
from .errors import ArchitectureError, CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["load_checkpoint", "load_state_dict"]

PathLike = Union[str, "os.PathLike[str]"]

#: open_clip's key for the position ids transformers < 4.31 kept in its text towers' state.
POSITION_IDS = "text.transformer.embeddings.position_ids"


def load_state_dict(
    checkpoint_path: PathLike, device: Union[str, torch.device] = "cpu", weights_only: bool = True
) -> OrderedDict[str, torch.Tensor]:
    """The state dict of a checkpoint file as open_clip's ``load_state_dict`` returns it (see the
    module's steps 2), read without running any pickle code unless ``weights_only=False``.

    Raises ``FileNotFoundError``, ``CheckpointError`` (naming the file) for what is not a checkpoint,
    ``UnsafeCheckpointError`` where a pickle names code in place of a weight."""
    import torch

    path = os.fspath(checkpoint_path)
    if weights_only:
        from .checkpoint import read_state_dict
        from .formats.openai import is_torchscript

        state = read_state_dict(path, mmap=True)
        if is_torchscript(path):
            for key in ARCHIVE_ONLY_KEYS:
                state.pop(key, None)
    else:
        from .load import _torch_loaded_state_dict

        state = _torch_loaded_state_dict(path)
        for key in ARCHIVE_ONLY_KEYS:  # a TorchScript module's buffers, as open_clip drops them
            if key in state and state[key].ndim == 0 and not state[key].is_floating_point():
                state.pop(key)
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    target = torch.device(device)
    if target.type != "cpu":
        state = OrderedDict((key, tensor.to(target)) for key, tensor in state.items())
    if next(iter(state)).startswith("module"):
        state = OrderedDict((key[7:], tensor) for key, tensor in state.items())
    return state


def load_checkpoint(
    model: torch.nn.Module,
    checkpoint_path: PathLike,
    strict: bool = True,
    weights_only: bool = True,
    device: Union[str, torch.device] = "cpu",
) -> Any:
    """Load a checkpoint file into ``model`` as open_clip's ``load_checkpoint`` does (the module's
    steps), faster and without running pickle code; returns ``model.load_state_dict``'s result
    (``missing_keys``, ``unexpected_keys``), or ``{}`` for big_vision ``.npz`` weights.

    ``strict`` is ``model.load_state_dict``'s. ``device`` is where the state dict is read to before
    it is copied into the model (open_clip's ``map_location``); the model's parameters keep their
    own device and dtype. ``weights_only=False`` reads the file with
    ``torch.load(weights_only=False)``, which runs its pickle: only for files you trust.

    Raises ``FileNotFoundError``; ``CheckpointError`` for a file that is not a checkpoint (an
    ``.npy`` array, a damaged file), ``UnsafeCheckpointError`` for a pickle that names code,
    ``ArchitectureError`` for weights the model cannot take where open_clip fails on an attribute
    or an assertion (a ``logit_bias`` for a model without one, position embeddings of another
    width); and, like open_clip, torch's ``RuntimeError`` for missing, unexpected or mis-shaped
    keys with ``strict=True``. All name the file."""
    path = os.fspath(checkpoint_path)
    suffix = os.path.splitext(path)[1]
    if suffix == ".npy":
        raise CheckpointError(
            f"{path}: an .npy file holds one array, not a checkpoint (big_vision weights are .npz)"
        )
    if suffix == ".npz":
        from .formats import _layout

        big_vision = _layout("big_vision")
        if big_vision is None:
            raise CheckpointError(f"{path}: big_vision .npz weights need clipfast.formats.big_vision")
        big_vision.load_big_vision_weights(model, path)
        return {}
    import torch

    direct = weights_only and torch.device(device).type == "cpu"
    if direct:
        state, sources = _mapped_state_dict(path)
    else:
        state, sources = load_state_dict(path, device=device, weights_only=weights_only), {}
    state = _third_party(model, state, path)
    fit_to_model(model, state, path)
    if sources and _fill_in_place(model, state, sources):
        # Every value is in place and the keys are the model's own: load_state_dict would copy
        # nothing and report nothing (13-25 ms of per-module Python for ViT-B-32).
        from torch.nn.modules.module import _IncompatibleKeys

        return _IncompatibleKeys([], [])
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise type(err)(f"{path}: {err}") from err


class _Source:
    """Where a tensor's values lie in the file (a whole storage, in order): what the Rust reader can
    convert straight into a model's own tensor."""

    def __init__(self, tensor: torch.Tensor, pending: Any, start: int, end: int, dtype: str) -> None:
        self.tensor = tensor
        self.pending = pending
        self.start = start
        self.end = end
        self.dtype = dtype


def _mapped_state_dict(path: str) -> tuple[OrderedDict[str, torch.Tensor], dict[int, _Source]]:
    """``load_state_dict(path)`` (views of a map of the file, nothing copied), and for each tensor that
    is a whole storage of the file in order, where (by ``id`` of the tensor)."""
    from .checkpoint import _plan_read

    pending = _plan_read(path, mmap=True, dtype=None)
    pending.convert()  # nothing to convert: every tensor is a view of the map
    state = pending.finish()
    storages = pending.reader.storages
    sources: dict[int, _Source] = {}
    for tensor, row in zip(state.values(), pending.rows):
        _, stored, _, _, storage, offset = row[:6]
        _, _, start, end = storages[storage]
        if offset == 0 and tensor.is_contiguous() and tensor.numel() * tensor.element_size() == end - start:
            sources[id(tensor)] = _Source(tensor, pending, start, end, stored)
    if pending.reader.format == "torchscript":
        for key in ARCHIVE_ONLY_KEYS:
            state.pop(key, None)
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    if next(iter(state)).startswith("module"):
        state = OrderedDict((key[7:], tensor) for key, tensor in state.items())
    return state, sources


_FLOATING = ("float16", "bfloat16", "float32", "float64")


def _fill_in_place(
    model: torch.nn.Module, state: MutableMapping[str, torch.Tensor], sources: dict[int, _Source]
) -> bool:
    """Convert, in Rust (all cores, GIL released), each file tensor that ``load_state_dict`` would
    copy into a model tensor of its shape (CPU, contiguous, floating) straight into that tensor, and
    put the model's own tensor in ``state`` in its place: ``load_state_dict`` then finds nothing to
    copy (``copy_`` from itself returns at once) and does everything else as it would: the same
    incompatible keys, errors and values (the conversion rounds as torch's ``copy_``).

    Returns True when that call has nothing left to do: every tensor was filled, the state dict
    names exactly the model's tensors (none shared under two names) and no module has a hook that
    runs after loading; its result is then no missing and no unexpected keys."""
    import torch

    if _has_load_hooks(model):
        return False
    targets = model.state_dict(keep_vars=True)
    jobs: dict[int, list[tuple[int, int, str, torch.Tensor]]] = {}
    readers: dict[int, Any] = {}
    filled: list[str] = []
    seen: set[int] = set()
    for key, tensor in state.items():
        source = sources.get(id(tensor))
        target = targets.get(key)
        if source is None or source.tensor is not tensor or not isinstance(target, torch.Tensor):
            continue
        dtype = str(target.dtype).removeprefix("torch.")
        if (
            target.device.type != "cpu"
            or not target.is_contiguous()
            or target.shape != tensor.shape
            or dtype not in _FLOATING
            or source.dtype not in _FLOATING
            or target.data_ptr() in seen
            or target.numel() == 0
        ):
            continue
        seen.add(target.data_ptr())
        jobs.setdefault(id(source.pending), []).append(
            (source.start, source.end, source.dtype, target.detach())
        )
        readers[id(source.pending)] = source.pending.reader
        filled.append(key)
    for pending_id, batch in jobs.items():
        readers[pending_id].convert(batch)
    if filled:
        # torch's copy_ marks each tensor modified (its version counter): autograd must still
        # refuse a backward through a graph that saved the old values, as after open_clip's load.
        _increment_versions([targets[key] for key in filled])
    for key in filled:
        state[key] = targets[key]
    return (
        len(filled) == len(state) == len(targets)
        and state.keys() == targets.keys()
        and not any(module._load_state_dict_post_hooks for module in model.modules())
    )


def _increment_versions(tensors: list[torch.Tensor]) -> None:
    """Bump the autograd version counter of tensors written outside torch."""
    import torch

    increment = getattr(torch.autograd.graph, "increment_version", None)
    for tensor in tensors:
        if increment is not None:
            increment(tensor)
        else:  # pragma: no cover (torch < 2.1 has only the private function)
            torch._C._increment_version(tensor)


def _overrides(module: torch.nn.Module, name: str) -> bool:
    """Whether ``module``'s class replaces ``torch.nn.Module``'s method ``name`` outside torch."""
    import torch

    own = getattr(type(module), name)
    return own is not getattr(torch.nn.Module, name) and not own.__module__.startswith("torch.")


def _has_load_hooks(model: torch.nn.Module) -> bool:
    """Whether a module may change the state dict before it is copied (a load pre-hook, its own
    ``_load_from_state_dict``, a model's own ``load_state_dict``, which may drop, rename or change
    what it is given) or name its tensors otherwise (``state_dict`` hooks or methods): then
    everything goes through ``load_state_dict`` as it is."""
    import torch

    if _overrides(model, "load_state_dict"):
        return True
    for module in model.modules():
        if _overrides(module, "state_dict"):
            return True
        if module._load_state_dict_pre_hooks or module._state_dict_hooks or module._state_dict_pre_hooks:
            return True  # (state_dict hooks may name the tensors otherwise than load_state_dict does)
        own = type(module)._load_from_state_dict
        if own is not torch.nn.Module._load_from_state_dict and not own.__module__.startswith("torch.nn."):
            return True  # (torch's batch norms only fill in num_batches_tracked of old files)
    return False


def _third_party(
    model: torch.nn.Module, state: OrderedDict[str, torch.Tensor], path: str
) -> OrderedDict[str, torch.Tensor]:
    """open_clip's ``convert_state_dict``: Apple's MobileCLIP checkpoints (open_clip 3.3 converts no
    other), whose image tower is a timm model converted by timm's own filter."""
    if "image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight" in state:
        return _mobileclip(model, state, path, fastvit=True)
    if "image_encoder.model.patch_emb.0.block.conv.weight" in state:
        return _mobileclip(model, state, path, fastvit=False)
    return state


#: MobileCLIP's text-encoder names -> open_clip's TextTransformer names (applied in this order).
_MOBILECLIP_TEXT = (
    ("projection_layer", "text_projection"),
    ("embedding_layer", "token_embedding"),
    ("final_layer_norm", "ln_final"),
    ("pre_norm_mha.0", "ln_1"),
    ("pre_norm_mha.1", "attn"),
    ("pre_norm_ffn.0", "ln_2"),
    ("pre_norm_ffn.1", "mlp.c_fc"),
    ("pre_norm_ffn.4", "mlp.c_proj"),
    ("qkv_proj.weight", "in_proj_weight"),
    ("qkv_proj.bias", "in_proj_bias"),
    ("transformer.", "transformer.resblocks."),
)


def _mobileclip(
    model: torch.nn.Module, state: OrderedDict[str, torch.Tensor], path: str, *, fastvit: bool
) -> OrderedDict[str, torch.Tensor]:
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None:
        raise ArchitectureError(
            f"{path}: a MobileCLIP checkpoint needs open_clip's MobileCLIP model (a timm trunk)"
        )
    if fastvit:
        from timm.models.fastvit import checkpoint_filter_fn
    else:
        from timm.models.vision_transformer_hybrid import checkpoint_filter_fn
    out: OrderedDict[str, torch.Tensor] = OrderedDict(
        ("visual.trunk." + key, value) for key, value in checkpoint_filter_fn(state, trunk).items()
    )
    prefix = "text_encoder."
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        for old, new in _MOBILECLIP_TEXT[:3]:
            name = name.replace(old, new)
        positions = "positional_embedding.pos_embed.pos_embed"
        if name.startswith(positions):
            name = name.replace(positions, "positional_embedding")
            value = value.squeeze()
        for old, new in _MOBILECLIP_TEXT[3:]:
            name = name.replace(old, new)
        out["text." + name] = value
    out["logit_scale"] = state["logit_scale"]
    return out


def _is_clipfast_clip(model: torch.nn.Module) -> bool:
    """Whether ``model`` is clipfast's own CLIP, without importing the model module (13 ms, a sixth
    of a ``load_checkpoint`` into open_clip's model): an instance means the module is loaded."""
    module = sys.modules.get(__package__ + ".model")
    return module is not None and isinstance(model, module.CLIP)


def fit_to_model(model: torch.nn.Module, state: MutableMapping[str, torch.Tensor], path: str = "") -> None:
    """open_clip's conversions of a state dict for ``model`` (the module's steps 4 to 7), in place."""
    import torch

    from .posembed import fit_position_embeddings, image_grid, resize_text_positions

    where = f"{path}: " if path else ""
    # 4. OpenAI's text layout <-> CustomTextCLIP's (text tower under `text.`).
    if (
        "positional_embedding" in state
        and not hasattr(model, "positional_embedding")
        and "text_projection" in state
    ):
        moved = [(("text." + k) if k.startswith(CUSTOM_TEXT_KEYS) else k, v) for k, v in state.items()]
        state.clear()
        state.update(moved)
    elif _is_clipfast_clip(model) and "text.text_projection" in state and "text_projection" not in state:
        moved = [
            (k[5:] if k.startswith("text.") and k[5:].startswith(CUSTOM_TEXT_KEYS) else k, v)
            for k, v in state.items()
        ]
        state.clear()
        state.update(moved)
    # 5. logit_scale / logit_bias as the model has them. open_clip reads model.logit_scale for a
    # file that has one and model.logit_bias always: a module without either (a tower, a wrapper
    # around a CLIP) is not a model it loads. (clipfast's and openai/CLIP's CLIP have no logit_bias.)
    if not hasattr(model, "logit_scale") and ("logit_scale" in state or not hasattr(model, "logit_bias")):
        raise ArchitectureError(
            f"{where}{type(model).__name__} has no logit_scale: load_checkpoint loads a whole CLIP "
            "model (open_clip's CLIP or CustomTextCLIP, clipfast's or openai/CLIP's), not one tower "
            "or a module holding one (open_clip's load_checkpoint fails on the attribute). Pass the "
            "CLIP itself, or load a part with model.load_state_dict"
        )
    scale = getattr(model, "logit_scale", None)
    if "logit_scale" in state and isinstance(scale, torch.Tensor) and scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(scale.shape)
    bias = getattr(model, "logit_bias", None)
    if "logit_bias" in state:
        if not isinstance(bias, torch.Tensor):
            raise ArchitectureError(
                f"{where}the checkpoint has a logit_bias (a SigLIP-style model) and the model has none"
            )
        if bias.ndim != state["logit_bias"].ndim:
            state["logit_bias"] = state["logit_bias"].reshape(bias.shape)
    elif isinstance(bias, torch.Tensor):  # a non-SigLIP checkpoint for SigLIP training: bias zero
        like = state.get("logit_scale")
        state["logit_bias"] = (
            torch.zeros_like(like) if like is not None else torch.zeros_like(bias, device="cpu")
        )
    # 6. Position ids that older transformers kept as state.
    state.pop(POSITION_IDS, None)
    # 7. Position embeddings resized to the model's grid and context length. open_clip fails on the
    # attribute where the file has an embedding the model has no place for.
    visual = getattr(model, "visual", None)
    if visual is None and "visual.positional_embedding" in state:
        raise ArchitectureError(
            f"{where}the checkpoint has an image tower ('visual.positional_embedding') and "
            f"{type(model).__name__} has no visual (open_clip's load_checkpoint fails on the attribute)"
        )
    if visual is not None and image_grid(visual) is not None:
        fit_position_embeddings(state, _OnlyImage(visual), source=path)
    key = "positional_embedding" if "positional_embedding" in state else "text.positional_embedding"
    old = state.get(key)
    if old is not None:
        wanted = getattr(model, "positional_embedding", None)
        if wanted is None:
            wanted = getattr(getattr(model, "text", None), "positional_embedding", None)
        if wanted is None:
            raise ArchitectureError(
                f"{where}the checkpoint has a text position embedding ({key!r}) and "
                f"{type(model).__name__} has none, nor a text tower with one (open_clip's "
                "load_checkpoint fails on the attribute)"
            )
        if isinstance(wanted, torch.Tensor):
            if old.ndim != 2 or wanted.ndim != 2 or old.shape[1] != wanted.shape[1]:
                raise ArchitectureError(
                    f"{where}{key!r} has shape {list(old.shape)}, the model's text position embedding "
                    f"{list(wanted.shape)}: another text width"
                )
            if old.shape[0] != wanted.shape[0]:
                state[key] = resize_text_positions(old, int(wanted.shape[0]))


class _OnlyImage:
    """A view of a model that has only its image tower (the text resize is done by the caller)."""

    def __init__(self, visual: Any) -> None:
        self.visual = visual
