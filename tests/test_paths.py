"""No name inside a file makes clipfast read or write outside the folder it was given: zip entry
names (torch.save and TorchScript records, npz members), a sharded index's weight_map, a Hugging
Face cache's refs, and the file name a download takes from its URL (redirects included).

Hostile names point at files that exist outside the folder and would make the load succeed (or
differ) if they were read. Where ``strace`` is installed, the reads also run under it and no file
system call may name the escape target. (Sharded-index and hub-file names are also covered by
test_huggingface.py and test_hub.py; this file adds the variants below.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import clipfast
import numpy as np
import pytest
import torch
from attacks.malicious import _tensor_pickle, write_torch_zip
from clipfast import hub
from clipfast.checkpoint import read_state_dict
from clipfast.errors import CheckpointError, ModelNotFoundError
from http_fault_server import FaultServer, Resource

MARK = "ESCAPE"  # every hostile name contains it; no system call may name a path with it


def _escaping_names(folder: Path) -> list[str]:
    outside = folder.parent / MARK
    outside.mkdir(exist_ok=True)
    return [f"../{MARK}", f"../../{MARK}/x", str(outside), f"a/../../{MARK}", f"{MARK}/../../{MARK}"]


def _archives(folder: Path) -> dict[str, Path]:
    """torch zips whose record names, root or storage keys climb out of the archive, and the files
    those names would reach, made to hold a valid pickle and storage."""
    out: dict[str, Path] = {}
    weight = np.arange(2, dtype="<f4").tobytes()
    for i, name in enumerate(_escaping_names(folder)):
        # A storage key that is a path: the record `archive/data/<key>` is looked up in the zip.
        path = folder / f"key{i}.pt"
        write_torch_zip(path, b"}(" + b"X\x01\x00\x00\x00w" + _tensor_pickle(name) + b"u", {})
        out[f"storage key {name}"] = path
        target = (folder / "archive" / "data" / name).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() and target.parent.exists():
            target.write_bytes(weight)
        # Whole records named outside the archive's folder.
        path = folder / f"root{i}.pt"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"{name}/data.pkl", b"\x80\x02}(X\x01\x00\x00\x00w" + _tensor_pickle("0") + b"u.")
            z.writestr(f"{name}/data/0", weight)
        out[f"root {name}"] = path
        # TorchScript code entries and npz members named outside.
        path = folder / f"code{i}.pt"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("m/data.pkl", b"\x80\x02c__torch__.m\nM\n)\x81}b.")
            z.writestr(f"m/code/__torch__/{name}.py", "class M(Module):\n  __parameters__ = []\n")
        out[f"code {name}"] = path
        path = folder / f"npz{i}.npz"
        with zipfile.ZipFile(path, "w") as z:
            with z.open(f"{name}.npy", "w") as f:
                np.save(f, np.arange(3, dtype="<f4"))
        out[f"npz member {name}"] = path
    return out


def _read(path: Path) -> str:
    try:
        sd = read_state_dict(path)
        return "ok: " + ",".join(sd)
    except (CheckpointError, ValueError) as err:
        return f"{type(err).__name__}"


def test_zip_entry_names_never_reach_the_file_system(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    results = {label: _read(path) for label, path in _archives(folder).items()}
    for label, result in results.items():
        if label.startswith("storage key"):
            # The record is not in the archive: refused, although a file of that name exists.
            assert result == "CheckpointError", (label, result)
        elif label.startswith("npz member"):
            assert result.startswith("ok: "), (label, result)  # a name, read from the archive only
        else:
            assert result == "CheckpointError", (label, result)


@pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed (the test above still runs)"
)
def test_zip_entry_names_under_strace(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [str(p) for p in _archives(folder).values()]
    code = (
        "import sys, warnings; warnings.filterwarnings('ignore')\n"
        f"sys.path.insert(0, {str(Path(clipfast.__file__).parent.parent)!r})\n"
        "from clipfast.checkpoint import read_state_dict, inspect_checkpoint\n"
        f"for p in {paths!r}:\n"
        "    for f in (read_state_dict, inspect_checkpoint):\n"
        "        try: f(p)\n"
        "        except ValueError: pass\n"
        "print('done')\n"
    )
    log = tmp_path / "trace"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(log), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "ptrace" in result.stderr and result.returncode != 0:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]
    calls = log.read_text().splitlines()
    assert any("key0.pt" in c for c in calls), "strace saw the reads"
    escaped = [c for c in calls if MARK in c]
    assert not escaped, escaped[:5]


@pytest.mark.parametrize(
    "name", ["..", ".", "%2e%2e", "%2E%2e", "a%2F..%2F..%2Fx", "%00", "x%00y", "", "%2f"], ids=repr
)
def test_a_url_never_names_a_file_outside_the_root(name: str, server: FaultServer, tmp_path: Path) -> None:
    data = b"weights"
    server.add(f"/files/{name}", Resource(data=data))
    url = server.url(f"/files/{name}")
    root = tmp_path / "root" / "inner"
    root.mkdir(parents=True)
    try:
        path = clipfast.download(url, root=str(root), sha256=False, progress=False)
    except ValueError as err:
        assert "file name" in str(err)
    else:  # a name that is harmless after all (an empty last segment names the folder above)
        assert Path(path).resolve().parent == root.resolve() and Path(path).read_bytes() == data
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and root not in p.parents]
    assert outside == []


def test_a_redirect_does_not_choose_the_file_name(server: FaultServer, tmp_path: Path) -> None:
    """The file is named after the URL asked for; where the server redirects to names nothing."""
    data = b"weights of the model"
    sha = hashlib.sha256(data).hexdigest()
    target = server.add(f"/{MARK}/../../{MARK}.pt", Resource(data=data))
    url = server.add(
        f"/clip/models/{sha}/model.pt", Resource(data=b"", redirect_to="/" + target.split("/", 3)[3])
    )
    root = tmp_path / "root"
    path = clipfast.download(url, root=str(root), progress=False)
    assert path == str(root / "model.pt") and Path(path).read_bytes() == data
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert all(w.startswith("root/model.pt") for w in written), written  # the file, its lock and record


def test_hub_cache_refs_cannot_point_outside_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """refs/main holds a commit hash; a path there is refused, not followed."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    outside = tmp_path / MARK
    (outside / "snapshots" / "x").mkdir(parents=True)
    (outside / "snapshots" / "x" / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for ref in (f"../../{MARK}", f"../../{MARK}/snapshots/x", str(outside), "a" * 39 + "/"):
        (repo / "refs" / "main").write_text(ref)
        with pytest.raises(ModelNotFoundError):
            hub.HubRepo("hf-hub:org/model").file("config.json")


@pytest.mark.parametrize(
    "shard", ["..\\x.safetensors", "~/x.safetensors", "x\x00.safetensors", ".", "..", ""]
)
def test_shard_names_are_plain_file_names(shard: str) -> None:
    from clipfast.formats.huggingface import parse_shard_index

    data = json.dumps({"weight_map": {"w": shard}}).encode()
    with pytest.raises(CheckpointError, match="not a file name in the index's folder"):
        parse_shard_index(data, "model.safetensors.index.json")


def test_the_strace_marker_is_absent_from_the_package() -> None:
    """The marker must not occur in clipfast's own paths, or the strace test would see false hits."""
    assert MARK not in str(Path(clipfast.__file__).resolve()) and MARK not in os.getcwd()
    assert torch.__version__  # the module is importable (the archives above need no torch)
