"""The ``clipfast`` command never imports torch for list, download, verify and inspect, and
``import clipfast`` stays lazy (PEP 562) without changing the public API.

Each command runs in a fresh interpreter whose import system refuses torch: an import of torch
(or of a module that needs it) stops the command with a traceback naming the importer. Commands
added later that need no model (``convert`` of a file, ``inspect`` provenance) belong in
``COMMANDS`` too.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import clipfast
import pytest
from clipfast import cache
from clipfast.registry import MODELS, sha256_of_url

sys.path.insert(0, str(Path(__file__).parent))
from http_fault_server import FaultServer, Resource

PACKAGE = str(Path(clipfast.__file__).parent.parent)

# Refuses torch (and torchvision) at import, naming who asked; then runs the CLI with argv.
GUARD = textwrap.dedent(
    """
    import sys, traceback
    sys.path.insert(0, {package!r})

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                stack = "".join(traceback.format_stack(limit=12))
                raise AssertionError(f"the CLI imported {{name}}:\\n{{stack}}")
            return None

    sys.meta_path.insert(0, NoTorch())
    from clipfast.cli import main
    status = main(sys.argv[1:])
    assert "torch" not in sys.modules, "torch was imported"
    sys.exit(status)
    """
)


def run_guarded(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", GUARD.format(package=PACKAGE), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    import os

    out = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFAST_")}
    out["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out["CLIPFAST_RETRIES"] = "0"
    return out


def test_the_guard_catches_torch(env: dict[str, str]) -> None:
    """The guard itself works: a command path that imports torch fails (the test can fail)."""
    code = GUARD.format(package=PACKAGE).replace("from clipfast.cli import main", "import clipfast.load")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "the CLI imported torch" in out.stderr


def test_list_verify_download_without_torch(tmp_path: Path, env: dict[str, str], server: FaultServer) -> None:
    root = tmp_path / "root"
    root.mkdir()
    out = run_guarded("list", "--root", str(root), "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["models"]) == len(MODELS)
    assert run_guarded("--help", env=env).returncode == 0

    f = tmp_path / "weights.bin"
    f.write_bytes(b"some weights")
    good = hashlib.sha256(b"some weights").hexdigest()
    out = run_guarded("verify", str(f), "--sha256", good, "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["match"] is True, out.stderr
    out = run_guarded("verify", str(f), env=env)
    assert out.returncode == 1, out.stderr  # no official model's hash
    out = run_guarded("verify", "ViT-B/32", "--root", str(root), env=env)
    assert out.returncode == 2 and "not in the cache" in out.stderr, out.stderr

    # download: a cached file its record vouches for, a bad download, offline.
    sha = sha256_of_url(MODELS["RN101"])
    assert sha is not None
    (root / "RN101.pt").write_bytes(b"cached")
    cache.write_record(root / "RN101.pt", sha)  # beside the file: the folder is writable
    out = run_guarded("download", "RN101", "--root", str(root), env=env)
    assert out.returncode == 0 and out.stdout.strip() == str(root / "RN101.pt"), out.stderr
    rn50 = MODELS["RN50"].split("azureedge.net", 1)[1]
    server.add(rn50, Resource(data=b"not RN50"))
    out = run_guarded("download", "RN50", "--root", str(root), env=dict(env, CLIPFAST_MIRROR=server.url("")))
    assert out.returncode == 2 and "SHA-256" in out.stderr, out.stderr
    assert server.stats(rn50).requests == 1
    out = run_guarded("download", "RN50", "--root", str(root), env=dict(env, CLIPFAST_OFFLINE="1"))
    assert out.returncode == 2 and "CLIPFAST_OFFLINE" in out.stderr, out.stderr


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_inspect_and_convert_without_torch(
    name: str,
    openai_archive: Callable[[str], Path],
    state_dict_file: Callable[[str], Path],
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    from clipfast.checkpoint import read_state_dict
    from safetensors.torch import save_file

    sft = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in read_state_dict(state_dict_file(name)).items()}, str(sft))
    for path in (openai_archive(name), state_dict_file(name), sft):
        out = run_guarded("inspect", str(path), "--json", env=env)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["architecture"] is not None, info["architecture_error"]
        assert info["architecture"]["kind"] == ("ViT" if name.startswith("ViT") else "ModifiedResNet")
    # convert: a checkpoint file to safetensors needs no model either.
    out = run_guarded("convert", str(state_dict_file(name)), str(tmp_path / "c.safetensors"), env=env)
    assert out.returncode == 0 and (tmp_path / "c.safetensors").is_file(), out.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 damaged")
    out = run_guarded("inspect", str(bad), env=env)
    assert out.returncode == 2 and "bad.pt" in out.stderr


def test_python_dash_m_and_import_are_lazy(env: dict[str, str]) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {PACKAGE!r})
        import clipfast
        heavy = [m for m in ("torch", "numpy", "PIL", "torchvision") if m in sys.modules]
        assert not heavy, heavy
        assert sorted(clipfast.__all__) == sorted(set(clipfast.__all__))
        assert set(clipfast.__all__) <= set(dir(clipfast))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "clipfast", "list", "--json"],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=PACKAGE),
        timeout=120,
    )
    assert out.returncode == 0 and "RN50" in out.stdout, out.stderr


def test_lazy_names_are_the_real_ones() -> None:
    """Every public name resolves to the object its module defines; ``clipfast.load`` stays the
    function even after the submodule of the same name is imported (which rebinds the attribute)."""
    code = textwrap.dedent(
        f"""
        import sys, types
        sys.path.insert(0, {PACKAGE!r})
        from clipfast.load import dtype_plan   # imports the submodule clipfast.load first
        import clipfast as clip
        import clipfast.load
        from clipfast import load
        load_module = sys.modules["clipfast.load"]  # `import clipfast.load as m`: the function, as before
        assert callable(clip.load) and not isinstance(clip.load, types.ModuleType), clip.load
        assert load is clip.load is load_module.load
        assert isinstance(load_module, types.ModuleType) and load_module.dtype_plan is dtype_plan
        import clipfast.model, clipfast.transforms, clipfast.tokenizer, clipfast.arch, clipfast.registry
        assert clip.model is sys.modules["clipfast.model"] and clip.model.CLIP.__name__ == "CLIP"
        assert clip.tokenize is clipfast.tokenizer.tokenize
        assert clip.preprocess_batch is clipfast.transforms.preprocess_batch
        assert clip.Architecture is clipfast.arch.Architecture
        assert clip.infer_architecture is clipfast.arch.infer_architecture
        assert clip.available_models is clipfast.registry.available_models
        assert callable(clip.download) and clip.download.resolve_model
        assert clip.clip.load is clip.load and clip.simple_tokenizer.SimpleTokenizer
        for name in clip.__all__:
            getattr(clip, name)
        import importlib
        for name in ("transforms", "checkpoint", "jit", "registry", "cache", "errors", "tokenizer"):
            assert getattr(clip, name) is importlib.import_module("clipfast." + name), name
        try:
            clip.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("no AttributeError")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_inspect_of_an_open_clip_folder_without_torch(tmp_path: Path, env: dict[str, str]) -> None:
    """inspect's provenance (config, published table, defaults) for a folder, local-dir:, a file of
    the folder and a bare file: no torch."""
    from open_clip_models import CONFIGS, open_clip_model, save, write_folder

    model = open_clip_model("gelu_h80")
    folder = write_folder(tmp_path / "m", CONFIGS["gelu_h80"], model.state_dict())
    bare = save(tmp_path / "bare.pt", model.state_dict())
    for target in (
        str(folder),
        f"local-dir:{folder}",
        str(folder / "open_clip_model.safetensors"),
        str(bare),
    ):
        out = run_guarded("inspect", target, "--json", env=env)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        expected = "config" if target != str(bare) else "default"
        assert info["decided_from"]["vision_activation"].startswith(expected), info["decided_from"]


def test_inspect_npz_without_torch(tmp_path: Path, env: dict[str, str]) -> None:
    import numpy as np

    path = tmp_path / "w.npz"
    np.savez(path, **{"params/t": np.ones(1, np.float32)})
    out = run_guarded("inspect", str(path), "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tensors"] == [{"name": "params/t", "dtype": "float32", "shape": [1]}]
