"""The CLIP model: openai/CLIP's module classes, attribute and parameter names, and numerics.

Code written for ``clip.model`` works with this module unchanged (``build_model``, ``convert_weights``,
``CLIP.encode_image`` / ``encode_text`` / ``forward`` and the ``dtype`` property). The difference is how
a model is made from a checkpoint: ``build_model`` constructs it on the ``meta`` device (no random
initialisation, no memory) and then assigns the checkpoint's tensors, converted once to their final
dtype, instead of allocating a random model and copying into it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Optional, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .arch import ARCHIVE_ONLY_KEYS, ARGUMENT, Architecture, Provenance, check_shapes, infer_architecture

__all__ = [
    "ACTIVATIONS",
    "CLIP",
    "AttentionPool2d",
    "Bottleneck",
    "LayerNorm",
    "ModifiedResNet",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "assign_state_dict",
    "build_model",
    "construct_on_meta",
    "convert_weights",
    "half_precision_names",
]


_M = TypeVar("_M", bound=nn.Module)


def _repeated(make: Callable[[], _M], count: int) -> list[_M]:
    """``count`` modules from ``make()``. On the meta device, where there is nothing to initialise,
    the first is copied instead (a copy costs a few percent of a construction)."""
    if count <= 0:
        return []
    first = make()
    tensors = [*first.parameters(), *first.buffers()]
    if tensors and all(t.is_meta for t in tensors):
        return [first, *(_meta_copy(first) for _ in range(count - 1))]
    return [first, *(make() for _ in range(count - 1))]


def _meta_copy(module: _M) -> _M:
    """A copy of a module whose tensors are all on the meta device: fresh tensors of the same
    shapes and types, fresh containers (hooks, child modules); plain attributes shared."""
    copy = object.__new__(type(module))
    state = dict(module.__dict__)
    for name, value in state.items():
        if type(value) in (dict, OrderedDict, set, list):
            state[name] = value.copy()
    with _no_torch_function():  # the meta device's mode adds nothing to explicit meta tensors
        for table in ("_parameters", "_buffers"):
            for key, tensor in state[table].items():
                if tensor is not None:
                    state[table][key] = _fresh_meta(tensor)
    children = state["_modules"]
    for key, child in children.items():
        if child is not None:
            children[key] = _meta_copy(child)
    copy.__dict__.update(state)
    return copy


#: Skips the Python TorchFunctionModes for calls that need none (where torch has the switch).
_no_torch_function: Callable[[], Any] = getattr(torch._C, "DisableTorchFunction", contextlib.nullcontext)


def _fresh_meta(tensor: torch.Tensor) -> torch.Tensor:
    fresh = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(fresh, requires_grad=tensor.requires_grad)
    return fresh


def _initial(shape: tuple[int, ...], init: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``init()``, except on the meta device, where only the shape matters: there torch runs
    ``randn`` and arithmetic through Python decompositions that import sympy and its compiler."""
    empty = torch.empty(shape)
    return empty if empty.is_meta else init()


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased downsampling: strided blocks average-pool instead of
    striding their convolutions."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        self.stride = stride
        if stride > 1 or inplanes != outplanes:
            # The shortcut pools first, then projects with an unstrided 1x1 convolution.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, outplanes, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(outplanes)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        out += shortcut
        return self.relu3(out)


class AttentionPool2d(nn.Module):
    """Pools a feature map with one query (the mean token) attending over all positions."""

    def __init__(
        self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None
    ) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(
            _initial(
                (spacial_dim**2 + 1, embed_dim),
                lambda: torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5,
            )
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        tokens = tokens + self.positional_embedding[:, None, :].to(tokens.dtype)
        pooled, _ = F.multi_head_attention_forward(
            query=tokens[:1],
            key=tokens,
            value=tokens,
            embed_dim_to_check=tokens.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return pooled.squeeze(0)


class ModifiedResNet(nn.Module):
    """openai/CLIP's ResNet: a three-convolution stem with an average pool, anti-aliased strided
    blocks, and attention pooling instead of global average pooling."""

    def __init__(
        self,
        layers: Union[tuple[int, int, int, int], list[int]],
        output_dim: int,
        heads: int,
        input_resolution: int = 224,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(half, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width  # the input width of the next block, advanced by _make_layer
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        stage = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        stage.extend(_repeated(lambda: Bottleneck(self._inplanes, planes), blocks - 1))
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.attnpool(x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (fp64 in a model loaded as fp64, whose
    norm weights are fp64: fp32 input there is refused by torch); the result has the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        compute = torch.float64 if weight is not None and weight.dtype == torch.float64 else torch.float32
        return super().forward(x.type(compute)).type(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


#: The MLP activations by name (``Architecture.vision_activation`` / ``text_activation``): OpenAI's
#: QuickGELU, and the exact GELU most open_clip models (LAION, DataComp) were trained with.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {name!r}")
    return ACTIVATIONS[name]()


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: self-attention, then an MLP (OpenAI's: 4x wide, QuickGELU).

    ``mlp_width`` (default 4 * d_model) and ``activation`` (``"quick_gelu"`` or ``"gelu"``) are
    keyword-only additions for open_clip's models; the parameter names stay OpenAI's."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        attn_mask: Optional[torch.Tensor] = None,
        *,
        mlp_width: Optional[int] = None,
        activation: str = "quick_gelu",
    ) -> None:
        super().__init__()
        hidden = d_model * 4 if mlp_width is None else mlp_width
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, hidden)),
                    ("gelu", _activation(activation)),
                    ("c_proj", nn.Linear(hidden, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask  # a plain attribute, not state: it is never saved or loaded

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.attn_mask is not None:
            n_ctx = x.shape[0]
            mask = self.attn_mask[..., -n_ctx:, -n_ctx:].to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks sharing one (optional) attention mask."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        attn_mask: Optional[torch.Tensor] = None,
        *,
        mlp_width: Optional[int] = None,
        activation: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(
            *_repeated(
                lambda: ResidualAttentionBlock(
                    width, heads, attn_mask, mlp_width=mlp_width, activation=activation
                ),
                layers,
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """ViT image tower: patch embedding, class token, pre-norm transformer, projection of the class token."""

    def __init__(
        self,
        input_resolution: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        *,
        mlp_width: Optional[int] = None,
        activation: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        grid = input_resolution // patch_size
        self.class_embedding = nn.Parameter(_initial((width,), lambda: scale * torch.randn(width)))
        self.positional_embedding = nn.Parameter(
            _initial((grid * grid + 1, width), lambda: scale * torch.randn(grid * grid + 1, width))
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_width=mlp_width, activation=activation)
        self.ln_post = LayerNorm(width)
        self.proj: Optional[nn.Parameter] = nn.Parameter(
            _initial((width, output_dim), lambda: scale * torch.randn(width, output_dim))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [N, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
        )
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # the blocks take LND
        x = self.ln_post(x[:, 0, :])
        if self.proj is not None:
            x = x @ self.proj
        return x


def _causal_mask(context_length: int) -> torch.Tensor:
    """Additive mask: -inf above the diagonal. Real memory even while the model is built on ``meta``
    (it is a plain attribute, so assigning the state dict never replaces it).

    Made with numpy: torch's ``triu_`` hands even a 77 x 77 matrix to its thread pool, and waiting
    for the second thread cost 15-35 ms per model built on a busy two-core machine (0.2 ms here)."""
    full = np.full((context_length, context_length), -np.inf, dtype=np.float32)
    mask = torch.from_numpy(np.triu(full, 1))
    device = torch.empty(0).device  # the default device (torch.get_default_device() needs torch >= 2.3)
    return mask if device.type in ("cpu", "meta") else mask.to(device)


class CLIP(nn.Module):
    """openai/CLIP's model: an image tower (ModifiedResNet or VisionTransformer) and a causal text
    transformer projected into one embedding space.

    Same constructor as ``clip.model.CLIP``; keyword-only additions for other OpenAI-structured models
    (open_clip's): ``vision_heads`` overrides the head count of the image tower, which openai/CLIP
    derives from its width; ``vision_mlp_width`` / ``transformer_mlp_width`` the MLP widths (default
    4x); ``vision_activation`` / ``text_activation`` the MLP activation of each tower
    (``"quick_gelu"``, OpenAI's, the default; or ``"gelu"``)."""

    def __init__(
        self,
        embed_dim: int,
        image_resolution: int,
        vision_layers: Union[tuple[int, int, int, int], int],
        vision_width: int,
        vision_patch_size: Optional[int],
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
        *,
        vision_heads: Optional[int] = None,
        vision_mlp_width: Optional[int] = None,
        transformer_mlp_width: Optional[int] = None,
        vision_activation: str = "quick_gelu",
        text_activation: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.visual: Union[ModifiedResNet, VisionTransformer]
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(
                layers=tuple(vision_layers),  # type: ignore[arg-type]
                output_dim=embed_dim,
                heads=vision_heads if vision_heads is not None else vision_width * 32 // 64,
                input_resolution=image_resolution,
                width=vision_width,
            )
        else:
            if vision_patch_size is None:
                raise ValueError("a VisionTransformer needs vision_patch_size")
            self.visual = VisionTransformer(
                input_resolution=image_resolution,
                patch_size=vision_patch_size,
                width=vision_width,
                layers=vision_layers,
                heads=vision_heads if vision_heads is not None else vision_width // 64,
                output_dim=embed_dim,
                mlp_width=vision_mlp_width,
                activation=vision_activation,
            )
        self.transformer = Transformer(
            width=transformer_width,
            layers=transformer_layers,
            heads=transformer_heads,
            attn_mask=self.build_attention_mask(),
            mlp_width=transformer_mlp_width,
            activation=text_activation,
        )
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(_initial((), lambda: torch.ones([]) * math.log(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """openai/CLIP's initialisation (costs nothing on the meta device)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            attn: Any = block.attn
            mlp: Any = block.mlp  # an nn.Sequential with named children
            nn.init.normal_(attn.in_proj_weight, std=attn_std)
            nn.init.normal_(attn.out_proj.weight, std=proj_std)
            nn.init.normal_(mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def build_attention_mask(self) -> torch.Tensor:
        """The causal mask of the text transformer (additive, -inf above the diagonal)."""
        return _causal_mask(self.context_length)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to: that of the image tower's first convolution."""
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.type(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        n_ctx = text.shape[-1]
        x = self.token_embedding(text).type(self.dtype)  # [batch, n_ctx, width]
        x = x + self.positional_embedding[:n_ctx].type(self.dtype)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x).type(self.dtype)
        # The end-of-text token has the highest id in each sequence: its features represent the text.
        eot = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]
        return eot @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


_MHA_HALF_ATTRIBUTES = (
    *("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
    *("in_proj_bias", "bias_k", "bias_v"),
)


def _half_precision_attributes(module: nn.Module) -> Iterator[str]:
    """The attribute names of ``module``'s own tensors that openai/CLIP's convert_weights makes fp16."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        yield "weight"
        if module.bias is not None:
            yield "bias"
    if isinstance(module, nn.MultiheadAttention):
        yield from (name for name in _MHA_HALF_ATTRIBUTES if getattr(module, name) is not None)
    for name in ("text_projection", "proj"):
        if getattr(module, name, None) is not None:
            yield name


def half_precision_names(model: nn.Module) -> frozenset[str]:
    """The state-dict keys of the tensors that ``convert_weights`` stores in half precision: conv and
    linear weights and biases, attention projections, ``text_projection`` and ``visual.proj``."""
    names = set()
    for prefix, module in model.named_modules():
        for attribute in _half_precision_attributes(module):
            names.add(f"{prefix}.{attribute}" if prefix else attribute)
    return frozenset(names)


def convert_weights(model: nn.Module) -> None:
    """Convert the applicable parameters to fp16, in place, as openai/CLIP's ``convert_weights`` does
    (layer norms, batch norms, embeddings and the logit scale stay as they are)."""

    def convert(module: nn.Module) -> None:
        for attribute in _half_precision_attributes(module):
            tensor = getattr(module, attribute)
            tensor.data = tensor.data.half()

    model.apply(convert)


class _SkipInitOnMeta(TorchFunctionMode):
    """Makes the in-place random/constant initialisers no-ops on meta tensors: there is nothing to
    fill, and torch runs them there through slow Python decompositions (0.4 s for ViT-B/32)."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Optional[dict[str, Any]] = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _INITIALISERS:
            # Tensor methods get the tensor first; torch.nn.init passes it as ``tensor=``.
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


# Matched by name: torch hands some of them over as TensorBase methods, some as Tensor methods.
_INITIALISERS = frozenset(
    {"normal_", "uniform_", "zero_", "fill_", "random_", "zeros_", "ones_", "constant_", "trunc_normal_"}
    | {"kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_"}
)


def construct_on_meta(arch: Architecture) -> CLIP:
    """An uninitialised CLIP of this architecture whose parameters take no memory (``meta`` device)."""
    with _sigint_deferred(), torch.device("meta"), _SkipInitOnMeta():
        return CLIP(**arch.model_arguments())


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Holds a Ctrl-C back until the block is left, then delivers it to the handler it was meant for.

    The meta device and ``_SkipInitOnMeta`` are torch function modes: torch pushes and pops them, and
    pops one for the length of each ``__torch_function__`` call, in Python. A KeyboardInterrupt raised
    between those steps left the mode stack unbalanced (``RuntimeError: trying to pop from empty mode
    stack`` instead of the KeyboardInterrupt, or a mode left active), seen in 1 of 3 runs of the
    Ctrl-C test. Building the meta model takes tens of milliseconds, so the delay is not felt. Only
    the main thread receives signals (and may set handlers); elsewhere, or where SIGINT is ignored
    or not handled by Python, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        yield
        return
    received: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            previous(signal.SIGINT, received[0])


def _state_slots(model: nn.Module) -> Iterator[tuple[dict[str, Any], str, str, torch.Tensor, bool]]:
    """(owning table, attribute, state-dict key, current tensor, is a parameter) for every entry of
    ``state_dict()``, in its order: each module's parameters, then its persistent buffers."""
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, param in module._parameters.items():
            if param is not None:
                yield module._parameters, name, dot + name, param, True
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                yield module._buffers, name, dot + name, buffer, False


def assign_state_dict(
    model: CLIP,
    state_dict: MutableMapping[str, torch.Tensor],
    source: Optional[str] = None,
) -> CLIP:
    """Check ``state_dict`` against the meta ``model`` (keys and shapes; errors name ``source``), then
    make its tensors the model's own: what ``load_state_dict(..., assign=True)`` does (no copy), done
    directly, as its per-module hooks cost more than the rest of the load's Python (75 ms for
    ViT-B/32). Returns the model in eval mode."""
    slots = list(_state_slots(model))
    check_shapes([(key, tuple(old.shape)) for _, _, key, old, _ in slots], state_dict, source)
    for table, name, key, old, is_parameter in slots:
        tensor = state_dict.get(key)
        if tensor is None:  # only a BatchNorm's num_batches_tracked may be absent (as torch allows)
            tensor = torch.zeros((), dtype=old.dtype)
        elif type(tensor) is not torch.Tensor and isinstance(tensor, nn.Parameter):
            tensor = tensor.detach()  # (the type test first: isinstance on Parameter is slow)
        if is_parameter:
            table[name] = nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:
            table[name] = tensor
    return model.eval()


#: openai/CLIP's build_model rule for the head counts: 64-wide heads whatever the shapes.
_OPENAI_RULE = {
    "vision_head_width": (64, Provenance(ARGUMENT, "build_model: openai/CLIP's 64-wide heads")),
    "transformer_head_width": (64, Provenance(ARGUMENT, "build_model: openai/CLIP's 64-wide heads")),
}


def _clip_layout(half: frozenset[str], half_dtype: torch.dtype) -> Callable[[str, torch.dtype], torch.dtype]:
    def target(name: str, stored: torch.dtype) -> torch.dtype:
        return half_dtype if name in half else torch.float32

    return target


def build_model(
    state_dict: dict[str, torch.Tensor],
    *,
    vision_heads: Optional[int] = None,
    transformer_heads: Optional[int] = None,
    quick_gelu: Optional[bool] = None,
) -> CLIP:
    """openai/CLIP's ``build_model``: a CLIP on the CPU, in eval mode, with convert_weights' dtypes
    (fp16 conv/linear/attention/projection weights, fp32 for the rest) filled from ``state_dict``.

    As in openai/CLIP the archive-only keys are deleted from ``state_dict`` and the model owns copies
    of the tensors; the activation is OpenAI's QuickGELU unless ``quick_gelu=False`` (GELU), the
    head counts openai/CLIP's rule (64-wide heads) unless given. Raises ``ArchitectureError`` when
    the tensors do not describe a CLIP model."""
    arch = infer_architecture(
        state_dict,
        vision_heads=vision_heads,
        transformer_heads=transformer_heads,
        quick_gelu=True if quick_gelu is None else quick_gelu,
        decided=_OPENAI_RULE,
    )
    model = construct_on_meta(arch)
    check_shapes([(k, tuple(t.shape)) for k, t in model.state_dict().items()], state_dict)
    plan = _clip_layout(half_precision_names(model), torch.float16)
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in state_dict.items():
        if key in ARCHIVE_ONLY_KEYS:
            continue
        dtype = plan(key, tensor.dtype) if tensor.is_floating_point() else tensor.dtype
        converted[key] = tensor.to(
            device="cpu", dtype=dtype, memory_format=torch.contiguous_format, copy=True
        )
    for key in ARCHIVE_ONLY_KEYS:
        state_dict.pop(key, None)
    return assign_state_dict(model, converted)
