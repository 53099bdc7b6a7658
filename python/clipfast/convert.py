"""``clipfast convert``: any checkpoint clipfast loads -> one safetensors file under OpenAI's key
names, with what no shape shows in its metadata, so that later loads are a zero-copy map and need
no guess.

Sources: the official model names, OpenAI's archives, state dicts (``torch.save`` or safetensors,
also training checkpoints), open_clip folders and files, Hugging Face folders, files and shards,
``local-dir:`` and ``hf-hub:`` names: whatever ``clipfast.load`` takes. The metadata (keys agreed
with ``clipfast.formats.metadata``) records the architecture, each tower's activation and head
count, the preprocessing and the source's SHA-256; a setting the source does not state is left out
(and warned about, as ``load`` warns), so a later load neither guesses silently nor takes a guess
for a configuration.

The tensors are copied by the Rust reader straight into the new file (dtype conversion, Hugging
Face's q/k/v joined, its projections transposed, in parallel): no torch import, except where the
configuration's image size or context length differs from the weights', which needs the position
embeddings resized as ``load`` resizes them (with torch).

The file is written under a temporary name in the destination folder, fsynced, then renamed: the
final path never holds a partial file.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from .arch import ARCHIVE_ONLY_KEYS, DEFAULT, PUBLISHED, TORCHSCRIPT, Architecture, openai_key_names
from .checkpoint import _ITEMSIZE
from .errors import ArchitectureError

if TYPE_CHECKING:
    from .formats import ModelSource, PreprocessConfig

__all__ = ["DTYPES", "ConvertResult", "convert", "expected_shapes", "half_precision_keys"]

#: ``--dtype`` choices: ``fp32`` makes every floating tensor float32; ``fp16`` is openai/CLIP's
#: layout (``convert_weights``: conv, linear, attention and projection weights float16, the rest
#: float32), what ``clipfast.load`` gives on a GPU; None keeps each tensor's stored dtype.
DTYPES = ("fp16", "fp32")

#: safetensors' dtype names.
_ST_NAMES = {
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "bool": "BOOL",
}
_FLOATING = ("float16", "bfloat16", "float32", "float64")
#: Alignment of the data section in the file (tensors are ordered so that each is aligned too).
_ALIGN = 64


@dataclass
class ConvertResult:
    """What ``convert`` wrote."""

    path: str
    source: str
    source_format: str
    tensor_count: int
    total_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)
    #: Settings that no source stated (left out of the metadata).
    assumed: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    """One output tensor: its shape, stored dtype, and the source tensors it is made of, in order
    (reader, tensor index, permutation, element count)."""

    name: str
    shape: tuple[int, ...]
    stored: str
    parts: list[tuple[Any, int, Optional[list[int]], int]]


def half_precision_keys(arch: Architecture, names: Any) -> frozenset[str]:
    """The keys among ``names`` that openai/CLIP's ``convert_weights`` makes float16 (torch-free:
    conv and linear weights and biases, attention projections, ``text_projection``, ``visual.proj``)."""
    out = set()
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if name in ("text_projection", "visual.proj"):
            out.add(name)
        elif leaf in ("in_proj_weight", "in_proj_bias"):
            out.add(name)
        elif leaf in ("weight", "bias") and (
            module in ("out_proj", "c_fc", "c_proj", "q_proj", "k_proj", "v_proj")
            or module.startswith("conv")
            or name.endswith("downsample.0.weight")
        ):
            out.add(name)
    return frozenset(out)


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The state dict ``clipfast.model.CLIP`` has for ``arch``: key -> shape (torch-free; the same
    keys and shapes as ``construct_on_meta(arch).state_dict()``)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def block(prefix: str, width: int, mlp: int) -> None:
        shapes.update(
            {
                f"{prefix}attn.in_proj_weight": (3 * width, width),
                f"{prefix}attn.in_proj_bias": (3 * width,),
                f"{prefix}attn.out_proj.weight": (width, width),
                f"{prefix}attn.out_proj.bias": (width,),
                f"{prefix}ln_1.weight": (width,),
                f"{prefix}ln_1.bias": (width,),
                f"{prefix}mlp.c_fc.weight": (mlp, width),
                f"{prefix}mlp.c_fc.bias": (mlp,),
                f"{prefix}mlp.c_proj.weight": (width, mlp),
                f"{prefix}mlp.c_proj.bias": (width,),
                f"{prefix}ln_2.weight": (width,),
                f"{prefix}ln_2.bias": (width,),
            }
        )

    def batch_norm(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    w = arch.vision_width
    if arch.is_vit:
        p = arch.vision_patch_size or 0
        grid = arch.vision_grid
        shapes["visual.class_embedding"] = (w,)
        shapes["visual.positional_embedding"] = (grid * grid + 1, w)
        shapes["visual.proj"] = (w, arch.embed_dim)
        shapes["visual.conv1.weight"] = (w, 3, p, p)
        shapes["visual.ln_pre.weight"] = shapes["visual.ln_pre.bias"] = (w,)
        for i in range(int(arch.vision_layers)):  # type: ignore[arg-type]
            block(f"visual.transformer.resblocks.{i}.", w, arch.vision_mlp_width or 4 * w)
        shapes["visual.ln_post.weight"] = shapes["visual.ln_post.bias"] = (w,)
    else:
        layers = arch.vision_layers
        assert isinstance(layers, tuple)
        stem = [(3, w // 2), (w // 2, w // 2), (w // 2, w)]
        for i, (cin, cout) in enumerate(stem, start=1):
            shapes[f"visual.conv{i}.weight"] = (cout, cin, 3, 3)
            batch_norm(f"visual.bn{i}", cout)
        inplanes = w
        for stage, count in enumerate(layers, start=1):
            planes = w * 2 ** (stage - 1)
            for b in range(count):
                prefix = f"visual.layer{stage}.{b}."
                stride = 1 if stage == 1 or b > 0 else 2
                shapes[prefix + "conv1.weight"] = (planes, inplanes, 1, 1)
                batch_norm(prefix + "bn1", planes)
                shapes[prefix + "conv2.weight"] = (planes, planes, 3, 3)
                batch_norm(prefix + "bn2", planes)
                shapes[prefix + "conv3.weight"] = (planes * 4, planes, 1, 1)
                batch_norm(prefix + "bn3", planes * 4)
                if stride > 1 or inplanes != planes * 4:
                    shapes[prefix + "downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                    batch_norm(prefix + "downsample.1", planes * 4)
                inplanes = planes * 4
        width = w * 32
        shapes["visual.attnpool.positional_embedding"] = (arch.vision_grid**2 + 1, width)
        for name in ("k_proj", "q_proj", "v_proj"):
            shapes[f"visual.attnpool.{name}.weight"] = (width, width)
            shapes[f"visual.attnpool.{name}.bias"] = (width,)
        shapes["visual.attnpool.c_proj.weight"] = (arch.embed_dim, width)
        shapes["visual.attnpool.c_proj.bias"] = (arch.embed_dim,)
    tw = arch.transformer_width
    shapes["positional_embedding"] = (arch.context_length, tw)
    shapes["text_projection"] = (tw, arch.embed_dim)
    shapes["logit_scale"] = ()
    for i in range(arch.transformer_layers):
        block(f"transformer.resblocks.{i}.", tw, arch.transformer_mlp_width or 4 * tw)
    shapes["token_embedding.weight"] = (arch.vocab_size, tw)
    shapes["ln_final.weight"] = shapes["ln_final.bias"] = (tw,)
    return shapes


def _locate(source: Union[str, os.PathLike[str]], download_root: Optional[str]) -> ModelSource:
    from .formats import locate
    from .registry import MODELS

    if isinstance(source, str) and source in MODELS:
        from .download import resolve_model

        return locate(resolve_model(source, download_root))
    return locate(os.fspath(source))


def _entries(src: ModelSource) -> dict[str, _Entry]:
    """The source's tensors under OpenAI's names (without reading any data)."""
    from .checkpoint import _open

    entries: dict[str, _Entry] = {}
    if src.direct:
        reader = _open(src.path)
        rows = reader.tensors
        names = openai_key_names([row[0] for row in rows])
        for index, row in enumerate(rows):
            name = names[row[0]]
            if name in ARCHIVE_ONLY_KEYS and reader.format == "torchscript":
                continue
            shape = tuple(row[2])
            if name == "logit_scale" and shape == (1,):
                shape = ()  # open_clip's nonscalar_logit_scale: the same element
            if name in entries:
                raise ArchitectureError(f"{src.path}: two tensors are named {name!r} in OpenAI's layout")
            entries[name] = _Entry(name, shape, row[1], [(reader, index, None, _numel(row[2]))])
        return entries
    from .formats.huggingface import HuggingFaceSource

    if not isinstance(src, HuggingFaceSource):
        raise ArchitectureError(
            f"{src.path}: clipfast convert does not know how to read the {src.layout} layout"
        )
    where: dict[str, tuple[Any, int, str, int]] = {}
    for reader, found in src.readers().values():
        rows = reader.tensors
        for key, index in found.items():
            where[key] = (reader, index, rows[index][1], _numel(rows[index][2]))
    for name, (keys, transpose, shape) in src.key_map().items():
        parts = [(where[k][0], where[k][1], [1, 0] if transpose else None, where[k][3]) for k in keys]
        entries[name] = _Entry(name, shape, where[keys[0]][2], parts)
    return entries


def _numel(shape: Any) -> int:
    count = 1
    for n in shape:
        count *= int(n)
    return count


def _target_dtype(dtype: Optional[str], name: str, stored: str, half: frozenset[str]) -> str:
    if stored not in _FLOATING or dtype is None:
        return stored
    if dtype == "fp32":
        return "float32"
    return "float16" if name in half else "float32"


def _source_sha256(src: ModelSource) -> tuple[str, Optional[dict[str, str]]]:
    """The SHA-256 of the weights file (recorded for a verified official file, else hashed in
    Rust); for shards, of the index, with each shard's."""
    from . import _native, cache

    def digest(path: str) -> str:
        record = cache.read_record(path)
        if record is not None and cache.is_verified(path, record.sha256):
            return record.sha256
        return str(_native.sha256_file(path))

    shards = getattr(src, "shards", None)
    if shards and any(wanted is not None for wanted in shards.values()):
        return digest(src.path), {os.path.basename(f): digest(f) for f in shards}
    return digest(src.path), None


def _metadata(
    arch: Architecture,
    src: ModelSource,
    preprocess: Optional[PreprocessConfig],
    source_name: str,
) -> dict[str, str]:
    from .formats.metadata import encode

    sha, shards = _source_sha256(src)
    meta = encode(arch, preprocess, source=source_name, source_sha256=sha, source_format=src.layout)
    # What no source stated is not recorded: a later load decides it again (and warns), instead of
    # reading a guess as a configuration.
    unstated = {name for name, where in arch.sources.items() if where.kind in (DEFAULT, PUBLISHED)}
    for name, key in (
        ("vision_activation", "clipfast.vision_act"),
        ("text_activation", "clipfast.text_act"),
        ("vision_heads", "clipfast.vision_heads"),
        ("transformer_heads", "clipfast.text_heads"),
    ):
        if name in unstated:
            meta.pop(key, None)
    settings = json.loads(meta["clipfast.architecture"])
    for name in unstated & set(settings):
        settings[name] = None
    meta["clipfast.architecture"] = json.dumps(settings, sort_keys=True)
    if shards is not None:
        meta["clipfast.source_shards"] = json.dumps(shards, sort_keys=True)
    return meta


def convert(
    source: Union[str, os.PathLike[str]],
    out: Union[str, os.PathLike[str]],
    *,
    dtype: Optional[str] = None,
    quick_gelu: Optional[bool] = None,
    vision_heads: Optional[int] = None,
    transformer_heads: Optional[int] = None,
    download_root: Optional[str] = None,
) -> ConvertResult:
    """Write the CLIP model ``source`` names (anything ``clipfast.load`` takes) to the safetensors
    file ``out``, under OpenAI's key names, with clipfast's metadata (see the module).

    ``dtype``: None keeps each tensor's stored dtype, ``"fp32"`` makes every floating tensor
    float32, ``"fp16"`` gives openai/CLIP's half-precision layout. ``quick_gelu``,
    ``vision_heads``, ``transformer_heads`` state what the source does not (as for ``load``): they
    are recorded. Raises what ``load`` raises for the source (``ModelNotFoundError``,
    ``CheckpointError``, ``ArchitectureError``), ``OSError`` when ``out`` cannot be written (nothing
    is left at ``out`` then), ``FileExistsError`` when ``out`` is one of the source's own files
    (weights, shards, configuration), ``ValueError`` for a bad ``dtype``."""
    from .arch import assumption_warning, infer_architecture

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} or None, not {dtype!r}")
    out_path = os.fspath(out)
    src = _locate(source, download_root)
    _refuse_source_as_output(src, out_path)
    entries = _entries(src)
    arch = infer_architecture(
        {name: e for name, e in entries.items()},
        vision_heads=vision_heads,
        transformer_heads=transformer_heads,
        quick_gelu=quick_gelu,
        decided=src.decided,
        source=src.path,
    )
    message = assumption_warning(arch, src.path, src.unused_config)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)
    expected = expected_shapes(arch)
    resized = any(
        tuple(entries[key].shape) != expected[key]
        for key in (
            "visual.positional_embedding",
            "visual.attnpool.positional_embedding",
            "positional_embedding",
        )
        if key in entries and key in expected
    )
    _check_keys(entries, expected, src.path, resized)
    preprocess = src.preprocess
    if preprocess is None and any(where.kind == TORCHSCRIPT for where in arch.sources.values()):
        from .formats import PreprocessConfig

        preprocess = PreprocessConfig()  # OpenAI's own models: clip's preprocessing
    meta = _metadata(arch, src, preprocess, os.fspath(source))
    half = half_precision_keys(arch, expected)
    if resized:
        tensors = _resized_tensors(
            src, arch, entries, dtype, half, quick_gelu, vision_heads, transformer_heads
        )
        count, total = _write_tensors(out_path, tensors, meta)
    else:
        count, total = _write_direct(out_path, entries, meta, dtype, half)
    return ConvertResult(out_path, os.fspath(source), src.layout, count, total, meta, arch.assumed())


def _source_files(src: ModelSource) -> list[str]:
    """Every file ``src`` is read from: the weights (or the shards' index) and each shard, and the
    configuration that travels with them."""
    files = [src.path, *src.files(), *getattr(src, "shards", {})]
    if src.config is not None:
        files.append(src.config)
    return files


def _refuse_source_as_output(src: ModelSource, out_path: str) -> None:
    """``out`` must not be a file of the source: the rename would replace the model being converted
    (a ``.pt`` turned into safetensors under its old name, a shard or a configuration of a folder
    overwritten, which leaves the folder unreadable)."""
    if not os.path.lexists(out_path):
        return
    for file in _source_files(src):
        try:
            same = os.path.samefile(out_path, file)
        except OSError:
            continue
        if same:
            raise FileExistsError(
                errno.EEXIST,
                f"the output is the source's own file {file}; converting onto it would replace the "
                "model being converted: write the safetensors file elsewhere",
                out_path,
            )


def _check_keys(
    entries: Mapping[str, _Entry], expected: Mapping[str, tuple[int, ...]], path: str, resized: bool
) -> None:
    """Every tensor the model has, nothing else (a BatchNorm's num_batches_tracked may be absent)."""
    for key, shape in expected.items():
        entry = entries.get(key)
        if entry is None:
            if key.endswith(".num_batches_tracked"):
                continue
            raise ArchitectureError(f"{path}: missing tensor {key!r} (expected shape {list(shape)})")
        if tuple(entry.shape) != shape and not (resized and key.endswith("positional_embedding")):
            raise ArchitectureError(
                f"{path}: {key!r} has shape {list(entry.shape)}, the model needs {list(shape)}"
            )
    extra = [key for key in entries if key not in expected]
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ArchitectureError(f"{path}: unexpected tensors {extra[:3]}{more} for this architecture")


def _layout(
    items: list[tuple[str, tuple[int, ...], str]], meta: Mapping[str, str]
) -> tuple[bytes, dict[str, int], int]:
    """The safetensors header (padded so that the data starts 64-byte aligned) and each tensor's
    offset into the data section; tensors ordered by item size, largest first, then by name, so
    that each is aligned to its dtype."""
    ordered = sorted(items, key=lambda item: (-_ITEMSIZE[item[2]], item[0]))
    header: dict[str, Any] = {"__metadata__": dict(meta)}
    offsets: dict[str, int] = {}
    at = 0
    for name, shape, dtype in ordered:
        size = _ITEMSIZE[dtype]
        for n in shape:
            size *= n
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [at, at + size]}
        offsets[name] = at
        at += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _ALIGN)
    return len(text).to_bytes(8, "little") + text, offsets, at


def _write_direct(
    out_path: str,
    entries: Mapping[str, _Entry],
    meta: Mapping[str, str],
    dtype: Optional[str],
    half: frozenset[str],
) -> tuple[int, int]:
    targets = {name: _target_dtype(dtype, name, e.stored, half) for name, e in entries.items()}
    head, offsets, data_len = _layout([(n, e.shape, targets[n]) for n, e in entries.items()], meta)
    by_reader: dict[int, tuple[Any, list[tuple[int, int, str, Optional[list[int]]]]]] = {}
    for name, entry in entries.items():
        at = offsets[name]
        for reader, index, permutation, numel in entry.parts:
            by_reader.setdefault(id(reader), (reader, []))[1].append((index, at, targets[name], permutation))
            at += numel * _ITEMSIZE[targets[name]]

    def fill(tmp: str) -> None:
        for reader, pieces in by_reader.values():
            reader.write_into(tmp, len(head), pieces)

    _publish(out_path, head, data_len, fill)
    return len(entries), data_len


def _publish(out_path: str, head: bytes, data_len: int, fill: Any) -> None:
    """Write ``head`` and ``data_len`` bytes (filled by ``fill(temporary path)``) under a temporary
    name beside ``out_path``, fsync, rename over ``out_path``, fsync the folder. On any failure the
    temporary file is removed and ``out_path`` is untouched."""
    from . import _native

    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, "the output folder does not exist", folder)
    needed = len(head) + data_len
    _remove_abandoned_temporaries(folder, os.path.basename(out_path))
    free = _native.free_disk_bytes(folder)
    if free < needed:
        raise OSError(28, f"not enough disk space: {needed} bytes needed, {free} free", folder)
    tmp = os.path.join(folder, f".{os.path.basename(out_path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    held = None
    try:
        held = open(tmp, "xb")  # held, locked, while it is written (see _lock)
        _lock(held)
        held.write(head)
        held.truncate(needed)
        held.flush()
        fill(tmp)
        os.fsync(held.fileno())
        held.close()  # before the rename (Windows renames no open file); now fresh, so not abandoned
        os.replace(tmp, out_path)
    except BaseException:
        if held is not None:
            held.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


#: A temporary file of a conversion left older than this, unlocked, was abandoned (its process was
#: killed): the next conversion to the same name removes it.
_ABANDONED_AFTER_S = 60.0


def _lock(file: Any) -> None:
    """An exclusive ``flock`` on the open temporary file, held until it is closed: a conversion in
    progress, here or on another machine sharing the folder, is never taken for an abandoned one."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locks, and no clean-up of abandoned files either
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the file's fresh mtime still protects it
        pass


def _remove_abandoned_temporaries(folder: str, name: str) -> None:
    """Removes ``.NAME.<pid>.<hex>.tmp`` files that a killed conversion left (SIGKILL, power loss):
    unlocked and untouched for ``_ABANDONED_AFTER_S``. Only what a conversion to ``name`` wrote."""
    import re
    import time

    try:
        import fcntl
    except ImportError:
        return
    pattern = re.compile(rf"\.{re.escape(name)}\.\d+\.[0-9a-f]{{8}}\.tmp")
    try:
        entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < _ABANDONED_AFTER_S:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a conversion holds it
            os.unlink(entry.path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _resized_tensors(
    src: ModelSource,
    arch: Architecture,
    entries: Mapping[str, _Entry],
    dtype: Optional[str],
    half: frozenset[str],
    quick_gelu: Optional[bool],
    vision_heads: Optional[int],
    transformer_heads: Optional[int],
) -> dict[str, Any]:
    """The tensors as ``load`` makes them (position embeddings resized to the configuration's
    sizes, as open_clip does), each in its stored dtype or the one asked for."""
    import torch

    from .load import _Hints, _load_eager

    hints = _Hints(vision_heads, transformer_heads, quick_gelu, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert has warned already
        model, _ = _load_eager(src, "cpu", torch.float32, False, hints, True)
    out = {}
    for name, tensor in model.state_dict().items():
        stored = entries[name].stored if name in entries else str(tensor.dtype).removeprefix("torch.")
        out[name] = tensor.to(getattr(torch, _target_dtype(dtype, name, stored, half)))
    return out


def _write_tensors(out_path: str, tensors: Mapping[str, Any], meta: Mapping[str, str]) -> tuple[int, int]:
    items = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()]
    head, offsets, data_len = _layout(items, meta)

    def fill(tmp: str) -> None:
        import torch

        with open(tmp, "r+b") as f:
            for name, tensor in tensors.items():
                f.seek(len(head) + offsets[name])
                f.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())

    _publish(out_path, head, data_len, fill)
    return len(tensors), data_len
