"""``python -m clipfast.demo`` (``make demo``): clipfast.load and openai/CLIP's clip.load side by side.

Offline: the first run writes a full-size ViT-B/32 checkpoint in OpenAI's exact published format (a
TorchScript archive, fp16, random weights) to ``$CLIPFAST_DEMO_DIR`` or ``~/.cache/clipfast-demo``.
The checkpoint is written with clipfast's own model class, so the demo needs nothing but clipfast.
Each run then loads it with clipfast and, when the reference package ``clip-anytorch`` is installed,
with openai/CLIP's ``clip.load``, prints the load times and checks that the two models have the same
weights and give the same outputs. Without ``clip-anytorch``, the reference is the file as torch
itself reads and runs it (``torch.jit.load`` and the archive's traced graph).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["demo_checkpoint", "main"]

MODEL = "ViT-B/32"


def demo_dir() -> Path:
    return Path(os.environ.get("CLIPFAST_DEMO_DIR") or Path.home() / ".cache" / "clipfast-demo")


def demo_checkpoint() -> Path:
    """The demo's ViT-B/32 checkpoint, written once (to a temporary name, then renamed into place).

    OpenAI's format is a trace of the model run in fp16; a torch without fp16 convolutions on the
    CPU (2.1) cannot make one, and then the weights are written as a ``torch.save`` state dict, the
    other kind of file ``clip.load`` reads."""
    import torch

    from . import _openai_format
    from .arch import ARCHIVE_ONLY_KEYS

    path = demo_dir() / "ViT-B-32.pt"
    if not path.is_file():
        print(f"writing a full-size {MODEL} checkpoint with random weights to {path} (once) ...", flush=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            s = _openai_format.spec(MODEL)
            model = _openai_format.random_model(s)
            try:
                _openai_format.save_archive(model, s, partial)
            except RuntimeError as err:
                if "Half" not in str(err):
                    raise
                print(f"this torch ({torch.__version__}) cannot trace fp16 on the CPU: writing a state dict")
                partial.unlink(missing_ok=True)
                torch.save(
                    {k: v for k, v in model.state_dict().items() if k not in ARCHIVE_ONLY_KEYS}, partial
                )
            # On disk before it gets its name (a crash leaves no half file there), and no
            # write-back still running while the loads below are timed.
            with open(partial, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


def _read_through(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _reference_module() -> Any:
    """openai/CLIP's ``clip`` package, or None when it is not installed."""
    try:
        import clip
    except ImportError:
        return None
    return clip


def main() -> int:
    import torch

    warnings.filterwarnings("ignore", category=UserWarning, module=r"clip\..*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import clipfast

    from . import _openai_format
    from .arch import ARCHIVE_ONLY_KEYS
    from .checkpoint import inspect_checkpoint

    path = demo_checkpoint()
    _read_through(path)  # both loads below then find the file in the page cache, whichever runs first
    t0 = time.perf_counter()
    clip = _reference_module()
    clip_import = time.perf_counter() - t0

    archive = inspect_checkpoint(str(path)).format == "torchscript"
    # A bare state dict does not say which activation and head counts it was trained with (an
    # OpenAI archive does); the demo wrote OpenAI's ViT-B/32, so it says so.
    spec = _openai_format.spec(MODEL)
    settings: dict[str, Any] = {}
    if not archive:
        settings = dict(
            quick_gelu=True, vision_heads=spec.vision_width // 64, transformer_heads=spec.transformer_heads
        )
    t0 = time.perf_counter()
    model, preprocess = clipfast.load(str(path), device="cpu", **settings)
    ours = time.perf_counter() - t0
    kind = "OpenAI's TorchScript format" if archive else "a torch.save state dict"
    print(f"checkpoint        {path} ({path.stat().st_size / 2**20:.0f} MiB, {kind})")
    reference: Any = None
    if clip is not None:
        t0 = time.perf_counter()
        reference, _ = clip.load(str(path), device="cpu", jit=False)
        theirs = time.perf_counter() - t0
        tokenize = clip.tokenize
        print(f"clip.load         {theirs:7.3f} s   (import clip: {clip_import:.2f} s more)")
        print(f"clipfast.load     {ours:7.3f} s   ({theirs / ours:.1f}x faster)")
        against = "clip.load"
        theirs_state = reference.state_dict()
    else:
        # Without the reference package: the file as torch itself reads it (and, for an archive,
        # runs it: the traced graph, patched for the CPU).
        tokenize = clipfast.tokenize
        print(f"clipfast.load     {ours:7.3f} s")
        print("reference         openai/CLIP is not installed (pip install clip-anytorch to time clip.load);")
        if archive:
            reference, _ = clipfast.load(str(path), device="cpu", jit=True)
            theirs_state = reference.state_dict()
            against = "torch.jit.load"
            print("                  comparing with the archive as torch.jit.load reads and runs it")
        else:
            theirs_state = torch.load(str(path), map_location="cpu", weights_only=True)
            theirs_state = {k: v.float() if v.is_floating_point() else v for k, v in theirs_state.items()}
            against = "torch.load"
            print("                  comparing the weights with torch.load's")

    ours_state = model.state_dict()
    extra = set(theirs_state) - set(ours_state)
    same_weights = extra <= set(ARCHIVE_ONLY_KEYS) and all(
        name in theirs_state
        and a.dtype == theirs_state[name].dtype
        and a.shape == theirs_state[name].shape
        and torch.equal(a, theirs_state[name])
        for name, a in ours_state.items()
    )
    print(
        f"weights           {'identical' if same_weights else 'DIFFERENT'} to {against}'s "
        f"({len(ours_state)} tensors)"
    )
    print(f"preprocess        {type(preprocess).__name__} for {model.visual.input_resolution} px")
    if reference is None:
        return 0 if same_weights else 1
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 224, 224, generator=gen)
    text = tokenize(["a photo of a cat", "a diagram"])
    with torch.no_grad():
        pairs = {
            "encode_image": (model.encode_image(image), reference.encode_image(image)),
            "encode_text": (model.encode_text(text), reference.encode_text(text)),
            "logits": (model(image, text)[0], reference(image, text)[0]),
        }
    worst = max(float((a - b).abs().max()) for a, b in pairs.values())
    print(f"outputs           {'match' if worst <= 1e-5 else 'DIFFER'} (largest difference {worst:.2e})")
    return 0 if same_weights and worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
