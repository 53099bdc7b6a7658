"""``python -m clipfast.demo`` (``make demo``): clipfast.load and openai/CLIP's clip.load side by side.

Offline: the first run writes a full-size ViT-B/32 checkpoint in OpenAI's exact published format (a
TorchScript archive, fp16, random weights) to ``$CLIPFAST_DEMO_DIR`` or ``~/.cache/clipfast-demo``.
Each run then loads it with both libraries, prints both load times, and checks that the two models
have the same weights and give the same outputs. Needs the reference package ``clip-anytorch``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

__all__ = ["demo_checkpoint", "main"]

MODEL = "ViT-B/32"


def demo_dir() -> Path:
    return Path(os.environ.get("CLIPFAST_DEMO_DIR") or Path.home() / ".cache" / "clipfast-demo")


def demo_checkpoint() -> Path:
    """The demo's ViT-B/32 archive, written once (to a temporary name, then renamed into place)."""
    from . import _testing

    path = demo_dir() / "ViT-B-32.pt"
    if not path.is_file():
        print(f"writing a full-size {MODEL} checkpoint with random weights to {path} (once) ...", flush=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            _testing.write_openai_archive(partial, _testing.spec(MODEL))
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


def main() -> int:
    import torch

    warnings.filterwarnings("ignore", category=UserWarning, module=r"clip\..*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import clipfast

    path = demo_checkpoint()
    _read_through(path)  # both loads below then find the file in the page cache, whichever runs first
    fresh = "clip" not in sys.modules  # writing the checkpoint imports it
    t0 = time.perf_counter()
    import clip  # the reference, openai/CLIP

    clip_import = f"   (import clip: {time.perf_counter() - t0:.2f} s more)" if fresh else ""

    t0 = time.perf_counter()
    model, preprocess = clipfast.load(str(path), device="cpu")
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference, _ = clip.load(str(path), device="cpu", jit=False)
    theirs = time.perf_counter() - t0

    print(f"checkpoint        {path} ({path.stat().st_size / 2**20:.0f} MiB, OpenAI's TorchScript format)")
    print(f"clip.load         {theirs:7.3f} s{clip_import}")
    print(f"clipfast.load     {ours:7.3f} s   ({theirs / ours:.1f}x faster)")

    ours_state, theirs_state = model.state_dict(), reference.state_dict()
    same_weights = list(ours_state) == list(theirs_state) and all(
        a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(ours_state.values(), theirs_state.values())
    )
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 224, 224, generator=gen)
    text = clip.tokenize(["a photo of a cat", "a diagram"])
    with torch.no_grad():
        pairs = {
            "encode_image": (model.encode_image(image), reference.encode_image(image)),
            "encode_text": (model.encode_text(text), reference.encode_text(text)),
            "logits": (model(image, text)[0], reference(image, text)[0]),
        }
    worst = max(float((a - b).abs().max()) for a, b in pairs.values())
    print(f"weights           {'identical' if same_weights else 'DIFFERENT'} ({len(ours_state)} tensors)")
    print(f"outputs           {'match' if worst <= 1e-5 else 'DIFFER'} (largest difference {worst:.2e})")
    print(f"preprocess        {type(preprocess).__name__} for {model.visual.input_resolution} px")
    return 0 if same_weights and worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
