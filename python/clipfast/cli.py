"""The ``clipfast`` command (also ``python -m clipfast``): download, list, verify, inspect and convert
models, and embed datasets.

clipfast download NAME...            fetch official models into the cache (verified)
clipfast list                        the official models, their sizes and whether they are cached
clipfast verify PATH|NAME [--sha256 HEX] [--json]
                                     re-hash a file: exit 0 when it matches, 1 when not, 2 on error
clipfast inspect PATH [--json] [--tensors]
                                     format, tensors, dtypes, bytes, architecture and where each setting
                                     was decided from, preprocessing, official name (PATH: a file, an
                                     open_clip or Hugging Face folder, local-dir:PATH, hf-hub:ORG/NAME)
clipfast convert IN OUT.safetensors [--dtype fp16|fp32] [--json]
                                     any model clipfast loads -> one safetensors file under OpenAI's names,
                                     with the settings no shape shows in its metadata (no torch needed)
clipfast embed INPUT... --model NAME|PATH --out DIR [...]
                                     embeddings of images and captions in clip-retrieval's layout
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, Optional

from . import cache
from ._native import __version__
from .download import default_root, resolve_model
from .registry import MODELS, sha256_of_url

__all__ = ["main"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_ERROR = 2


def _official() -> dict[str, tuple[str, str]]:
    """name -> (sha256, file name) of the official models."""
    out: dict[str, tuple[str, str]] = {}
    for name, url in MODELS.items():
        sha = sha256_of_url(url)
        if sha is not None:
            out[name] = (sha, url.rsplit("/", 1)[-1])
    return out


def _model_of_hash(sha256: str) -> Optional[str]:
    for name, (sha, _) in _official().items():
        if sha == sha256:
            return name
    return None


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2))
    else:
        print(text)


def _fail(args: argparse.Namespace, message: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": message}, indent=2))
    else:
        print(f"clipfast: error: {message}", file=sys.stderr)
    return EXIT_ERROR


# --- download ------------------------------------------------------------------------------


def _cmd_download(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for name in args.names:
        if name not in MODELS:
            print(f"clipfast: error: unknown model {name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        try:
            path = resolve_model(name, args.root, verify=args.verify)
        except (OSError, RuntimeError, ValueError) as err:
            print(f"clipfast: error: {name}: {err}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        print(path)
    return status


# --- list ----------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    root = args.root or default_root()
    rows = []
    for name, (sha, file_name) in _official().items():
        path = os.path.join(root, file_name)
        size: Optional[int] = None
        state = "not cached"
        if os.path.isfile(path):
            size = os.path.getsize(path)
            state = "verified" if cache.is_verified(path, sha) else "cached, not yet verified"
        rows.append({"name": name, "file": path, "sha256": sha, "size": size, "state": state})
    if args.json:
        print(json.dumps({"root": root, "models": rows}, indent=2))
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)  # type: ignore[arg-type]
    print(f"cache: {root}")
    for r in rows:
        size_text = _human(r["size"]) if r["size"] is not None else "-"  # type: ignore[arg-type]
        print(f"{r['name']:<{width}}  {size_text:>10}  {r['state']}")
    return EXIT_OK


# --- verify --------------------------------------------------------------------------------


def _valid_hex(text: str) -> Optional[str]:
    text = text.strip().lower()
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text
    return None


def _cmd_verify(args: argparse.Namespace) -> int:
    official = _official()
    target: str = args.target
    expected: Optional[str] = None
    if args.sha256 is not None:
        expected = _valid_hex(args.sha256)
        if expected is None:
            return _fail(args, f"--sha256 must be 64 hexadecimal digits, got {args.sha256!r}")
    if target in official and not os.path.isfile(target):
        sha, file_name = official[target]
        path = os.path.join(args.root or default_root(), file_name)
        expected = expected or sha
        if not os.path.isfile(path):
            return _fail(args, f"{target} is not in the cache ({path} does not exist)")
    else:
        path = target
        if not os.path.exists(path):
            return _fail(args, f"{path}: no such file, and not an official model name")
        if not os.path.isfile(path):
            return _fail(args, f"{path}: not a regular file")
        if expected is None:
            by_name = {file_name: sha for sha, file_name in official.values()}
            expected = by_name.get(os.path.basename(path))
    try:
        digest = cache.hash_file(path)
        size = os.path.getsize(path)
    except OSError as err:
        return _fail(args, f"{path}: {err.strerror or err}")
    model = _model_of_hash(digest)
    if expected is not None:
        match = digest == expected
    else:
        match = model is not None  # no hash given: does it match any official file?
    if match:
        cache.write_record(path, digest)
    else:
        cache.forget(path)
    payload = {
        "path": path,
        "sha256": digest,
        "expected": expected,
        "match": match,
        "model": model,
        "size": size,
    }
    if match:
        what = f" ({model})" if model else ""
        text = f"OK  {path}{what}\n    sha256 {digest}"
    elif expected is not None:
        text = f"MISMATCH  {path}\n    sha256   {digest}\n    expected {expected}"
    else:
        text = f"UNKNOWN  {path}: sha256 {digest} is no official model's; pass --sha256 to check another file"
    _emit(args, payload, text)
    return EXIT_OK if match else EXIT_MISMATCH


# --- inspect -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Shape:
    """Stands in for a tensor where only its shape is needed (architecture inference)."""

    shape: tuple[int, ...]


def _file_sha256(path: str) -> str:
    record = cache.read_record(path)
    if record is not None and cache.is_verified(path, record.sha256):
        return record.sha256
    return cache.hash_file(path)


#: The settings no shape shows (and the MLP widths, which open_clip's configurations state), shown
#: with where each was decided from.
_DECIDED_SETTINGS = (
    "vision_heads",
    "transformer_heads",
    "vision_activation",
    "text_activation",
    "vision_mlp_width",
    "transformer_mlp_width",
    "image_resolution",
    "context_length",
)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .errors import ArchitectureError, CheckpointError, MissingDependencyError, ModelNotFoundError

    try:
        from .checkpoint import inspect_checkpoint
    except ImportError as err:  # the checkpoint reader is not built into this copy
        return _fail(args, f"clipfast.checkpoint is not available: {err}")
    from .formats import ModelSource, locate
    from .formats.big_vision import is_big_vision

    target: str = args.path
    official = _official()
    if target in official and not os.path.exists(target):  # a name, as verify and convert take
        target = os.path.join(args.root or default_root(), official[target][1])
        if not os.path.isfile(target):
            return _fail(
                args,
                f"{args.path} is not in the cache ({target} does not exist; `clipfast download` fetches it)",
            )
    arch_error: Optional[str] = None
    try:
        source = locate(target)
    except ModelNotFoundError as err:
        return _fail(args, str(err))
    except ArchitectureError as err:
        if not is_big_vision(target):  # a configuration refused
            return _fail(args, str(err))
        # big_vision's .npz: no model clipfast.load builds (the error says so), tensors all the same.
        source = ModelSource(layout="big_vision", path=target)
        arch_error = str(err)
    # A configuration unreadable; an hf-hub: name online without huggingface_hub.
    except (CheckpointError, OSError, MissingDependencyError) as err:
        return _fail(args, str(err))
    path = source.path
    if not os.path.isfile(path):
        return _fail(args, f"{path}: no such file")
    try:
        infos = [inspect_checkpoint(file) for file in source.files()]
    except (CheckpointError, OSError) as err:
        return _fail(args, str(err))
    info = infos[0] if len(infos) == 1 else _combined(path, infos)
    architecture: Optional[dict[str, Any]] = None
    decided: Optional[dict[str, str]] = None
    assumed: list[str] = []
    if arch_error is None:  # else: big_vision's, no CLIP model to infer
        try:
            from .arch import infer_architecture, without_wrapper_prefix

            if source.direct:
                shapes: Any = without_wrapper_prefix({t.name: _Shape(tuple(t.shape)) for t in info.tensors})
            else:
                shapes = source.declared_shapes()
            arch = infer_architecture(shapes, decided=source.decided, source=path)
            architecture = arch.settings()
            architecture["kind"] = "ViT" if arch.is_vit else "ModifiedResNet"
            decided = {name: str(arch.sources[name]) for name in _DECIDED_SETTINGS if name in arch.sources}
            assumed = arch.assumed()
        except ArchitectureError as err:
            arch_error = str(err)
        except ImportError as err:
            arch_error = f"clipfast.arch is not available: {err}"
    try:
        digest = _file_sha256(path)
    except OSError as err:
        return _fail(args, f"{path}: {err.strerror or err}")
    model = _model_of_hash(digest)
    metadata = _clipfast_metadata(path) if info.format == "safetensors" else {}
    preprocess: Optional[dict[str, Any]] = None
    if source.preprocess is not None:
        pre = source.preprocess
        preprocess = {
            "mean": list(pre.mean),
            "std": list(pre.std),
            "interpolation": pre.interpolation,
            "resize_mode": pre.resize_mode,
            "fill_color": pre.fill_color,
            "source": str(pre.source),
        }
    payload: dict[str, Any] = {
        "path": path,
        "layout": source.layout,
        "config": source.config,
        "format": info.format,
        "tensor_count": info.tensor_count,
        "dtype_counts": dict(info.dtype_counts),
        "total_bytes": info.total_bytes,
        "file_size": info.file_size,
        "sha256": digest,
        "official_model": model,
        "architecture": architecture,
        "decided_from": decided,
        "assumed": assumed,
        "preprocess": preprocess,
        "metadata": metadata,
        "architecture_error": arch_error,
    }
    if args.tensors or args.json:
        payload["tensors"] = [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in info.tensors
        ]
    dtypes = ", ".join(f"{count} {dtype}" for dtype, count in sorted(info.dtype_counts.items()))
    lines = [f"path:        {path}"]
    if source.config:
        lines.append(f"config:      {source.config} ({source.layout})")
    lines += [
        f"format:      {info.format}",
        f"tensors:     {info.tensor_count} ({dtypes})",
        f"bytes:       {_human(info.total_bytes)} of tensor data, file {_human(info.file_size)}",
    ]
    if architecture is not None and decided is not None:
        a = architecture
        if a["kind"] == "ViT":
            vision = (
                f"ViT patch {a['vision_patch_size']}, width {a['vision_width']}, layers {a['vision_layers']}"
            )
        else:
            vision = f"ModifiedResNet layers {tuple(a['vision_layers'])}, width {a['vision_width']}"
        lines.append(
            f"architecture: {vision}, heads {a['vision_heads']}, {a['image_resolution']}px; "
            f"text width {a['transformer_width']}, layers {a['transformer_layers']}, heads "
            f"{a['transformer_heads']}, context {a['context_length']}, vocab {a['vocab_size']}; "
            f"embed {a['embed_dim']}"
        )
        lines.append("settings:")
        for name, where in decided.items():
            lines.append(f"  {name + ':':<23}{a[name]!s:<12} from {where}")
        if assumed:
            lines.append(
                f"  assumed: {', '.join(assumed)}: clipfast.load warns; pass quick_gelu= / vision_heads= / "
                "transformer_heads= to decide"
            )
    else:
        lines.append(f"architecture: unknown ({arch_error})")
    if preprocess is not None:
        lines.append(
            f"preprocess:  mean {tuple(preprocess['mean'])}, std {tuple(preprocess['std'])}, "
            f"{preprocess['interpolation']}, resize {preprocess['resize_mode']} (from {preprocess['source']})"
        )
    for key, value in metadata.items():
        if key not in ("clipfast.architecture", "clipfast.preprocess"):
            lines.append(f"metadata:    {key} = {value}")
    lines.append(f"sha256:      {digest}")
    lines.append(f"official:    {model if model else 'no (the hash matches no official file)'}")
    if args.tensors:
        lines += [f"  {t.name}: {t.dtype} {list(t.shape)}" for t in info.tensors]
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _combined(path: str, infos: list[Any]) -> Any:
    """One description of a sharded checkpoint's shards (named by its index file)."""
    from collections import Counter

    from .checkpoint import CheckpointInfo

    counts: Counter[str] = Counter()
    for info in infos:
        counts.update(info.dtype_counts)
    return CheckpointInfo(
        path=path,
        format=f"{infos[0].format} ({len(infos)} shards)",
        tensor_count=sum(i.tensor_count for i in infos),
        dtype_counts=dict(counts),
        total_bytes=sum(i.total_bytes for i in infos),
        file_size=sum(i.file_size for i in infos),
        tensors=tuple(t for i in infos for t in i.tensors),
    )


def _clipfast_metadata(path: str) -> dict[str, str]:
    """The safetensors metadata entries clipfast wrote (``clipfast.*``)."""
    from .formats.metadata import read_safetensors_metadata

    metadata = read_safetensors_metadata(path) or {}
    return {k: v for k, v in metadata.items() if k.startswith("clipfast.")}


# --- convert -------------------------------------------------------------------------------


def _cmd_convert(args: argparse.Namespace) -> int:
    import warnings

    from .convert import convert

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = convert(
                args.source,
                args.out,
                dtype=args.dtype,
                quick_gelu=args.quick_gelu,
                vision_heads=args.vision_heads,
                transformer_heads=args.transformer_heads,
                download_root=args.root,
            )
        except (OSError, RuntimeError, ValueError, ImportError) as err:
            return _fail(args, str(err))
    notes = [str(w.message) for w in caught]
    for note in notes:
        if not getattr(args, "json", False):
            print(f"clipfast: warning: {note}", file=sys.stderr)
    payload = {**dataclasses.asdict(result), "warnings": notes}
    lines = [
        f"wrote:       {result.path}",
        f"from:        {result.source} ({result.source_format})",
        f"tensors:     {result.tensor_count}, {_human(result.total_bytes)}",
    ]
    lines += [f"metadata:    {key} = {value}" for key, value in result.metadata.items() if key != "format"]
    if result.assumed:
        lines.append(f"not recorded (no source states them): {', '.join(result.assumed)}")
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK


# --- embed ---------------------------------------------------------------------------------


def _cmd_embed(args: argparse.Namespace) -> int:
    # The embedding job needs torch; it is imported only for this command.
    from .errors import ImageError, InputError, OutputFolderError

    try:
        from .embedding import embed

        summary = embed(
            args.inputs,
            model=args.model,
            out=args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            dtype=args.dtype,
            normalize=not args.no_normalize,
            shard_size=args.shard_size,
            text=args.text,
            input_format=args.input_format,
            image_column=args.image_column,
            caption_column=args.caption_column,
            decode=args.decode,
            download_root=args.root,
            progress=False if args.quiet else None,
            ray=True if args.ray in (True, "") else (args.ray or False),
            actors=args.actors,
        )
    # RuntimeError: a cached official file that fails its checksum (ChecksumError), as for convert.
    except (InputError, OutputFolderError, ImageError, ImportError, OSError, ValueError, RuntimeError) as err:
        return _fail(args, str(err))
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    elif not args.quiet:
        print(summary)
    return EXIT_OK


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _embed_parser(sub: Any, root_help: str) -> None:
    p = sub.add_parser(
        "embed",
        help="embeddings of images and captions, in clip-retrieval's layout (resumable)",
        description=(
            "Embed every image (and caption) of INPUT... into DIR, in clip-retrieval's layout "
            "(img_emb/, text_emb/, metadata/, stats/). A rerun resumes: finished shards are skipped; a "
            "folder written with another model or settings is refused. Failures go to DIR/errors.jsonl."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="folders, text files of paths, glob patterns, WebDataset .tar shards, .csv/.parquet of "
        "image_path,caption, or text/.jsonl files of captions",
    )
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="what clipfast.load takes")
    p.add_argument("--out", required=True, metavar="DIR", help="the output folder")
    p.add_argument("--batch-size", type=_positive, help="samples per model call (default 256 GPU, 32 CPU)")
    p.add_argument("--workers", type=_positive, help="preprocessing threads (default: torch's thread count)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="stored dtype (default fp16)")
    p.add_argument(
        "--no-normalize", action="store_true", help="store the embeddings without L2 normalisation"
    )
    p.add_argument("--shard-size", type=_positive, default=10_000, help="samples per output shard (10000)")
    text = p.add_mutually_exclusive_group()
    text.add_argument(
        "--text",
        dest="text",
        action="store_const",
        const=True,
        help="embed captions even where some samples lack one (those become errors)",
    )
    text.add_argument("--no-text", dest="text", action="store_const", const=False, help="leave captions out")
    p.add_argument(
        "--input-format",
        default="auto",
        choices=("auto", "folder", "paths", "glob", "tar", "table", "captions", "image"),
        help="read every INPUT as this kind (default: told apart per input)",
    )
    p.add_argument("--image-column", default="image_path", help="image column of a .csv/.parquet input")
    p.add_argument("--caption-column", default="caption", help="caption column of a .csv/.parquet input")
    p.add_argument("--decode", choices=("exact", "fast"), default="exact", help="JPEG decoding (see docs)")
    p.add_argument("--root", help=root_help)
    p.add_argument(
        "--ray",
        nargs="?",
        const=True,
        default=None,
        metavar="ADDRESS",
        help="run as a Ray Data pipeline: on the cluster at ADDRESS (auto, HOST:PORT, ray://HOST:PORT; "
        "local: a new local Ray), or without one on $RAY_ADDRESS or a new local Ray",
    )
    p.add_argument("--actors", type=_positive, help="with --ray: model actors (default: one per GPU, or 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_embed)


# --- entry point ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipfast", description="Download, verify, inspect and convert CLIP models; embed datasets."
    )
    parser.add_argument("--version", action="version", version=f"clipfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    root_help = f"cache folder (default {default_root()})"

    p = sub.add_parser("download", help="download official models into the cache, verified")
    p.add_argument("names", nargs="+", metavar="NAME", help="model names, e.g. ViT-B/32")
    p.add_argument("--root", help=root_help)
    p.add_argument(
        "--verify", action="store_true", help="re-hash cached files even when recorded as verified"
    )
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("list", help="the official models, their sizes and whether they are cached")
    p.add_argument("--root", help=root_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("verify", help="re-hash a file: exit 0 match, 1 mismatch, 2 error")
    p.add_argument("target", metavar="PATH|NAME", help="a file, or an official model name (its cached file)")
    p.add_argument("--sha256", help="the expected SHA-256 (default: the official one for the name/file)")
    p.add_argument("--root", help=root_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "inspect", help="format, tensors, architecture (and where each setting came from), official name"
    )
    p.add_argument(
        "path",
        metavar="PATH|NAME",
        help="a checkpoint file, a model folder, local-dir:PATH, hf-hub:ORG/NAME, an official name (cached)",
    )
    p.add_argument("--root", help=root_help)
    p.add_argument("--json", action="store_true", help="machine-readable output (with every tensor)")
    p.add_argument("--tensors", action="store_true", help="also list every tensor")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "convert",
        help="any model clipfast loads -> one safetensors file (OpenAI's names, settings in its metadata)",
    )
    p.add_argument(
        "source",
        metavar="IN",
        help="an official name, a checkpoint file, an open_clip or Hugging Face folder, local-dir:, hf-hub:",
    )
    p.add_argument("out", metavar="OUT.safetensors", help="the file to write (replaced atomically)")
    p.add_argument(
        "--dtype",
        choices=("fp16", "fp32"),
        help="fp32: every floating tensor float32; fp16: openai/CLIP's half layout (default: as stored)",
    )
    act = p.add_mutually_exclusive_group()
    act.add_argument(
        "--quick-gelu", dest="quick_gelu", action="store_true", default=None, help="the towers use QuickGELU"
    )
    act.add_argument("--gelu", dest="quick_gelu", action="store_false", help="the towers use GELU")
    p.add_argument(
        "--vision-heads", type=_positive, help="the image tower's head count, where the source does not say"
    )
    p.add_argument(
        "--transformer-heads",
        type=_positive,
        help="the text tower's head count, where the source does not say",
    )
    p.add_argument("--root", help=root_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_convert)

    _embed_parser(sub, root_help)
    return parser


def _is_ray_address(text: str) -> bool:
    return text in ("auto", "local") or "://" in text or re.fullmatch(r"[\w.\-]+:\d+", text) is not None


def _lone_ray_flags(argv: list[str]) -> list[str]:
    """``embed --ray INPUT ...``: an optional value would swallow the INPUT; a token after ``--ray``
    that is not a Ray address (auto, local, HOST:PORT, ray://...) is not its value."""
    out = list(argv)
    for i, token in enumerate(out[:-1]):
        if token == "--ray" and not out[i + 1].startswith("-") and not _is_ray_address(out[i + 1]):
            out[i] = "--ray="
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    if tokens[:1] == ["embed"]:
        tokens = _lone_ray_flags(tokens)
    args = _parser().parse_args(tokens)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print("clipfast: interrupted", file=sys.stderr)
        return 130
    return status
