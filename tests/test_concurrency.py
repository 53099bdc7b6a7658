"""Threads, processes and Ctrl-C: loads from 8 threads at once give identical models,
preprocess_batch from 8 threads gives clip's tensors, DataLoader workers (fork after the Rust
threads ran, and spawn) give the parent's results, and SIGINT in the middle of a long load, a long
preprocess_batch or a download leaves a usable interpreter, no partial file at a final path and no
stale lock. (Compose from 8 threads, DataLoader with Compose, fork after a load and a stalled
download's Ctrl-C are in test_transforms.py, test_load.py and test_download.py.)"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clipfast
import numpy as np
import pytest
import torch
from http_fault_server import FaultServer, Resource
from PIL import Image

PACKAGE = str(Path(clipfast.__file__).resolve().parent.parent)


def encoded(w: int, h: int, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, size=(h, w, 3)).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt, quality=85) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def test_loads_from_8_threads_give_identical_models(openai_archive: Callable[[str], Path]) -> None:
    path = str(openai_archive("ViT-B/32"))
    expected = clipfast.load(path, device="cpu")[0].state_dict()
    results: list[Any] = [None] * 8
    barrier = threading.Barrier(8)

    def load(i: int) -> None:
        barrier.wait()
        results[i] = clipfast.load(path, device="cpu")[0].state_dict()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for sd in results:
        assert sd is not None and list(sd) == list(expected)
        assert all(torch.equal(sd[k], expected[k]) for k in expected)


def test_preprocess_batch_from_8_threads() -> None:
    items = [encoded(300 + 17 * i, 200 + 11 * i, ["JPEG", "PNG"][i % 2], i) for i in range(6)]
    items.append(Image.open(io.BytesIO(encoded(250, 400, "PNG", 9))).convert("RGBA"))
    expected = clipfast.preprocess_batch(items, threads=1)
    results: list[Any] = [None] * 8
    barrier = threading.Barrier(8)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = clipfast.preprocess_batch(items, threads=2)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert all(r is not None and torch.equal(r, expected) for r in results)


class EncodedDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Each item preprocessed by preprocess_batch (Rust decode and resize) in the worker."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return clipfast.preprocess_batch([self.items[i]], threads=2)[0]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_after_the_rust_threads_ran(context: str) -> None:
    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{context} is not available here")
    items = [encoded(320 + 9 * i, 240 + 5 * i, ["JPEG", "PNG"][i % 2], 20 + i) for i in range(6)]
    expected = clipfast.preprocess_batch(items, threads=2)  # Rust worker threads run in the parent
    loader = torch.utils.data.DataLoader(
        EncodedDataset(items), batch_size=2, num_workers=2, multiprocessing_context=context
    )
    assert torch.equal(torch.cat(list(loader)), expected)


def interrupt_child(code: str, ready: str = "started", after: float = 0.5, timeout: float = 300) -> list[str]:
    """Runs ``code`` in a child (with the SIGINT handler a terminal gives), sends SIGINT once it
    prints ``ready`` and ``after`` seconds more, and returns its output lines (it must exit 0)."""
    script = "\n".join(
        [
            "import os, signal, sys, time, warnings; warnings.filterwarnings('ignore')",
            "signal.signal(signal.SIGINT, signal.default_int_handler)",
            f"sys.path.insert(0, {PACKAGE!r})",
            textwrap.dedent(code),
        ]
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first == ready, (first, proc.stderr.read() if proc.stderr else "")
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    return out.split()


def test_ctrl_c_during_loads_leaves_a_usable_interpreter(openai_archive: Callable[[str], Path]) -> None:
    path = str(openai_archive("RN50"))
    lines = interrupt_child(
        f"""
        import clipfast, torch
        path = {path!r}
        first = clipfast.load(path, device="cpu")[0].state_dict()
        print("started", flush=True)
        try:
            while True:
                clipfast.load(path, device="cpu")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        again = clipfast.load(path, device="cpu")[0].state_dict()
        print("same" if all(torch.equal(first[k], again[k]) for k in first) else "differs")
        """,
        after=1.0,
    )
    assert lines == ["interrupted", "same"]


def test_ctrl_c_while_the_meta_model_is_built_arrives_after_torch_modes_are_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building the meta model runs under two torch function modes that torch pushes and pops in
    Python; a KeyboardInterrupt between those steps unbalanced the mode stack (the load above then
    failed with 'trying to pop from empty mode stack'). A Ctrl-C arriving while the model is built is
    delivered once the block is left: the construction finished, no mode is left active, and the
    KeyboardInterrupt still reaches the caller."""
    from clipfast import model as model_module
    from clipfast._testing import build_reference_model, tiny

    built = []
    original = model_module.CLIP.__init__

    def interrupted_init(self: Any, *args: Any, **kwargs: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of the construction
        original(self, *args, **kwargs)
        built.append(True)

    monkeypatch.setattr(model_module.CLIP, "__init__", interrupted_init)
    arch = model_module.infer_architecture(build_reference_model(tiny("RN50")).state_dict())
    # The handler a terminal gives: a suite started as a background job (nohup ... &) inherits an
    # ignored SIGINT, and a Ctrl-C that is ignored never raises.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            model_module.construct_on_meta(arch)
        assert built == [True]
        assert torch._C._len_torch_function_stack() == 0
        assert torch.empty(1).device.type == "cpu"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


@pytest.mark.parametrize("mixed", [False, True], ids=["one native call", "item by item"])
def test_ctrl_c_stops_a_long_preprocess_batch_promptly(mixed: bool) -> None:
    """A batch of 400 large JPEGs takes tens of seconds; Ctrl-C stops it within about an item's
    time (it waited for the whole batch), and the next batch gives the same tensors as before.
    With a BMP among the items (Pillow decodes it) the batch runs item by item on a thread pool."""
    lines = interrupt_child(
        f"""
        MIXED = {mixed}
        import io, time, clipfast, numpy as np, torch
        from PIL import Image
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 255, size=(1200, 1600, 3)).astype(np.uint8))
        buf = io.BytesIO(); img.save(buf, "JPEG", quality=90); data = buf.getvalue()
        small = clipfast.preprocess_batch([data] * 2, threads=2)
        print("started", flush=True)
        start = time.monotonic()
        bmp = io.BytesIO(); Image.new("RGB", (50, 40)).save(bmp, "BMP")
        items = [data] * 400 + ([bmp.getvalue()] if MIXED else [])
        try:
            clipfast.preprocess_batch(items, threads=2)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", round(time.monotonic() - start, 2), flush=True)
        print("same" if torch.equal(clipfast.preprocess_batch([data] * 2, threads=2), small) else "differs")
        """,
        after=1.0,
    )
    assert lines[0] == "interrupted" and lines[-1] == "same", lines
    assert float(lines[1]) < 6.0, lines  # 1 s before Ctrl-C, then at most a few items


def test_ctrl_c_during_a_download_leaves_no_partial_file_and_no_stale_lock(
    server: FaultServer, tmp_path: Path
) -> None:
    data = hashlib.shake_256(b"slow").digest(4_000_000)
    sha = hashlib.sha256(data).hexdigest()
    url = server.add(f"/clip/models/{sha}/slow.pt", Resource(data=data, throttle_seconds=20.0))
    root = tmp_path / "root"
    lines = interrupt_child(
        f"""
        import os, subprocess, time
        from clipfast.download import download
        said = []
        def progress(done, total):
            if done and not said:
                said.append(1)
                print("started", flush=True)
        try:
            download({url!r}, root={str(root)!r}, progress=progress)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        final = os.path.join({str(root)!r}, "slow.pt")
        print("absent" if not os.path.exists(final) else "present", flush=True)
        # The lock is free: another process gets it at once (and resumes the download).
        code = "import sys; sys.path.insert(0, {PACKAGE!r}); from clipfast import _native; " \\
               "l = _native.FileLock(sys.argv[1]); print(l.acquire(timeout=2.0))"
        out = subprocess.run([sys.executable, "-c", code, final + ".lock"], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr[-200:], flush=True)
        """,
        after=0.5,
    )
    assert lines == ["interrupted", "absent", "True"], lines
    assert sorted(p.name for p in root.iterdir()) == ["slow.pt.lock", "slow.pt.part", "slow.pt.part.meta"]
    # The interpreter that was interrupted could go on; a new process resumes and verifies.
    server.resources[f"/clip/models/{sha}/slow.pt"].throttle_seconds = 0.0
    path = clipfast.download(url, root=str(root), progress=False)
    assert Path(path).read_bytes() == data
    assert sorted(p.name for p in root.iterdir()) == ["slow.pt", "slow.pt.lock", "slow.pt.verified"]
    assert server.stats(f"/clip/models/{sha}/slow.pt").ranges[-1] is not None  # it resumed
