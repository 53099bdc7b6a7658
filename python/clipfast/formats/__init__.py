"""Where a model's tensors and settings come from: one module per source layout.

``clipfast.load`` turns what it is given (a path to a file or a folder, ``local-dir:PATH``,
``hf-hub:ORG/NAME``) into a :class:`ModelSource` with :func:`locate`, which asks the layout modules
in :data:`LAYOUTS` order. Each module exposes::

    def locate(path: str) -> Optional[ModelSource]               # a file or a folder
    def from_hub(repo: clipfast.hub.HubRepo) -> Optional[ModelSource]   # optional: hf-hub: names

returning ``None`` when the path (or hub repository) is not in its layout, and raising a typed
error naming the file when it is its layout but unusable (no weights, a configuration clipfast
cannot build exactly). Adding a format means adding a module here and its name to
:data:`LAYOUTS`, not growing ``load.py``.

A :class:`ModelSource` names the weights file, the settings decided by the configuration that
travels with the weights (``(value, Provenance)`` pairs, see ``arch.infer_architecture``) and the
preprocessing. Layouts whose tensors are stored under OpenAI's key names (OpenAI, open_clip) leave
the reading to ``load.py``'s single-pass reader (``direct`` is true); others (Hugging Face) override
:meth:`ModelSource.declared_shapes` and :meth:`ModelSource.read` and return OpenAI's names.

Torch-free at import (``clipfast inspect`` uses it without torch).
"""

from __future__ import annotations

import importlib
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from ..arch import Decided, Provenance
from ..errors import ModelNotFoundError

if TYPE_CHECKING:
    import torch

    from ..checkpoint import DtypeArg

__all__ = ["HF_HUB", "LAYOUTS", "LOCAL_DIR", "ModelSource", "PreprocessConfig", "locate", "rgb_normalization"]

#: The layout modules (``clipfast.formats.<name>``), asked in this order. Where open_clip's and
#: Hugging Face's files sit in one folder (LAION's repositories ship both), open_clip's are used.
#: ``openai`` takes any single checkpoint file with OpenAI's key names, so it is asked last.
LAYOUTS = ("open_clip", "huggingface", "big_vision", "openai")

#: open_clip's schemas for a model folder and a Hugging Face Hub repository.
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"

#: clip's (and open_clip's default) normalisation constants.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def rgb_normalization(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` as three finite numbers each, a single number standing for all three
    channels (as torchvision's ``Normalize`` broadcasts it). Raises ``ValueError`` saying what is
    wrong: another count (it would fail at the first image), a zero, infinite or NaN value (every
    embedding would be non-finite)."""
    out = []
    for name, values in (("mean", mean), ("std", std)):
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise ValueError(f"{name} {list(values)} is not one or three numbers (one per RGB channel)")
        if not all(math.isfinite(v) for v in values) or (name == "std" and 0.0 in values):
            raise ValueError(
                f"{name} {list(values)} is not finite" + (" and non-zero" if name == "std" else "")
            )
        out.append(tuple(values))
    return out[0], out[1]


@dataclass(frozen=True)
class PreprocessConfig:
    """The image preprocessing a model was trained with (open_clip's ``preprocess_cfg``):
    ``interpolation`` ``"bicubic"`` or ``"bilinear"``; ``resize_mode`` ``"shortest"`` (resize the
    shorter side, centre crop: clip's), ``"longest"`` (resize the longer side, pad with
    ``fill_color``) or ``"squash"`` (resize to the square, ignoring the aspect ratio). ``size`` is
    the model's input resolution (None: take it from the model)."""

    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    size: Optional[int] = None
    source: Provenance = field(default_factory=lambda: Provenance("default"))


@dataclass
class ModelSource:
    """A model found by a layout module: its weights file and what travels with it."""

    #: The layout module's name (``"openai"``, ``"open_clip"``, ...).
    layout: str
    #: The file the tensors are read from (named in errors).
    path: str
    #: Settings decided by the configuration travelling with the weights, or the archive's kind:
    #: setting name -> ``(value, Provenance)``; see ``arch.infer_architecture``.
    decided: dict[str, Decided] = field(default_factory=dict)
    #: The preprocessing from that configuration; None: clip's for the model's resolution.
    preprocess: Optional[PreprocessConfig] = None
    #: The configuration file that came with the weights, if any.
    config: Optional[str] = None
    #: A configuration file beside the weights that was not used because the weights are not in
    #: its layout (a Hugging Face ``config.json`` beside tensors under OpenAI's names): named in the
    #: warning about assumed settings, which would otherwise seem to ignore it.
    unused_config: Optional[str] = None
    #: The tensors are stored under OpenAI's key names in the single file ``path`` (after
    #: ``arch.openai_key_names``): ``load`` reads it in its own single pass.
    direct: bool = True

    def files(self) -> list[str]:
        """The files the tensors are read from (one, or a sharded checkpoint's shards)."""
        return [self.path]

    def declared_shapes(self) -> Mapping[str, Any]:
        """Each tensor's name (OpenAI's) -> an object with ``.shape``, without reading data.
        Only called when ``direct`` is false (the default reads ``path``'s declared tensors)."""
        from ..arch import without_wrapper_prefix
        from ..checkpoint import inspect_checkpoint

        return without_wrapper_prefix({t.name: t for t in inspect_checkpoint(self.path).tensors})

    def read(self, *, mmap: bool, dtype: DtypeArg) -> OrderedDict[str, torch.Tensor]:
        """The tensors under OpenAI's key names (dtype and mmap as ``checkpoint.read_state_dict``).
        Only called when ``direct`` is false."""
        from ..arch import without_wrapper_prefix
        from ..checkpoint import read_state_dict

        return without_wrapper_prefix(read_state_dict(self.path, mmap=mmap, dtype=dtype))


def _layout(name: str) -> Any:
    """The layout module, or None where it is not part of this copy (added by another change)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            return None
        raise


def _not_found(name: str, why: str) -> ModelNotFoundError:
    from ..registry import available_models

    return ModelNotFoundError(f"Model {name} not found; available models = {available_models()}; {why}")


def locate(name: str) -> ModelSource:
    """The model ``name`` names: a checkpoint file, a model folder (open_clip's, Hugging Face's),
    ``local-dir:PATH`` or ``hf-hub:ORG/NAME``. Raises ``ModelNotFoundError`` (a FileNotFoundError)
    for nothing there or a folder of no known layout, and the layout's typed errors otherwise."""
    if name.startswith(HF_HUB):
        return _from_hub(name)
    if name.startswith(LOCAL_DIR):
        path = name[len(LOCAL_DIR) :]
        if not os.path.isdir(path):
            raise _not_found(name, f"{LOCAL_DIR} needs a folder, and {path!r} is none")
    else:
        path = name
    if not os.path.exists(path):
        raise _not_found(name, "no such file or folder")
    for layout in LAYOUTS:
        module = _layout(layout)
        if module is None:
            continue
        found: Optional[ModelSource] = module.locate(path)
        if found is not None:
            return found
    if os.path.isdir(path):
        raise _not_found(
            name,
            f"{path} is a folder without a model: no open_clip_config.json (open_clip) or config.json "
            "(Hugging Face) with weights",
        )
    raise _not_found(name, "no layout module reads this file")


def _from_hub(name: str) -> ModelSource:
    """An ``hf-hub:ORG/NAME[@REV]`` repository (downloaded files, or the Hugging Face cache offline):
    the first layout whose ``from_hub`` recognises its files."""
    from ..hub import HubRepo

    repo = HubRepo(name)
    for layout in LAYOUTS:
        module = _layout(layout)
        from_hub = getattr(module, "from_hub", None)
        if from_hub is None:
            continue
        found: Optional[ModelSource] = from_hub(repo)
        if found is not None:
            return found
    raise repo.missing("model configuration", ["open_clip_config.json", "config.json"])
