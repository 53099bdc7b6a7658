"""The ``clipfast`` command line: verify (exit 0/1/2, --json), list, download, inspect."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import clipfast
import pytest
import torch
from clipfast import _testing, cache, cli
from clipfast.arch import infer_architecture
from clipfast.registry import MODELS, available_models, sha256_of_url

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PROXY_VARIABLES
from http_fault_server import FaultServer, Resource


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CLIPFAST_RETRIES", "0")
    monkeypatch.delenv("CLIPFAST_OFFLINE", raising=False)
    monkeypatch.delenv("CLIPFAST_MIRROR", raising=False)
    # As the download tests do: a proxy from the environment must not intercept the local server.
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --- verify --------------------------------------------------------------------------------


def test_verify_match_mismatch_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"some weights")
    good = hashlib.sha256(b"some weights").hexdigest()
    status, out, _ = run(capsys, "verify", str(f), "--sha256", good.upper(), "--json")
    assert status == 0
    payload = json.loads(out)
    assert payload["match"] is True and payload["sha256"] == good and payload["size"] == 12
    assert cache.is_verified(f, good)  # a successful check is recorded
    status, out, _ = run(capsys, "verify", str(f), "--sha256", "0" * 64, "--json")
    assert status == 1
    assert json.loads(out)["match"] is False
    assert not cache.is_verified(f, good)
    status, out, _ = run(capsys, "verify", str(f), "--sha256", "0" * 64)
    assert status == 1 and "MISMATCH" in out
    # Without --sha256, a file that is no official model's does not "match".
    status, out, _ = run(capsys, "verify", str(f), "--json")
    assert status == 1 and json.loads(out)["model"] is None
    # Errors: missing file, bad hex, a folder.
    assert run(capsys, "verify", str(tmp_path / "nope.pt"))[0] == 2
    status, out, _ = run(capsys, "verify", str(f), "--sha256", "xyz", "--json")
    assert status == 2 and "64 hexadecimal" in json.loads(out)["error"]
    assert run(capsys, "verify", str(tmp_path))[0] == 2


def test_verify_named_model_rehashes_the_cached_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "verify", "ViT-B/32", "--root", str(tmp_path))[0] == 2  # not cached
    fake = tmp_path / "ViT-B-32.pt"
    fake.write_bytes(b"not the real file")
    sha = sha256_of_url(MODELS["ViT-B/32"])
    assert sha is not None
    cache.write_record(fake, sha)  # even a record vouching for it is not trusted by verify
    status, out, _ = run(capsys, "verify", "ViT-B/32", "--root", str(tmp_path), "--json")
    assert status == 1
    payload = json.loads(out)
    assert (
        payload["expected"] == sha and payload["sha256"] == hashlib.sha256(b"not the real file").hexdigest()
    )
    assert cache.read_record(fake) is None


# --- list ----------------------------------------------------------------------------------


def test_list_shows_cache_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list", "--root", str(tmp_path), "--json")
    assert status == 0
    rows = json.loads(out)["models"]
    import clip  # the reference

    assert [r["name"] for r in rows] == clip.available_models() == available_models()
    assert {r["state"] for r in rows} == {"not cached"}
    (tmp_path / "RN50.pt").write_bytes(b"12345")
    (tmp_path / "RN101.pt").write_bytes(b"123")
    rn101_sha = sha256_of_url(MODELS["RN101"])
    assert rn101_sha is not None
    cache.write_record(tmp_path / "RN101.pt", rn101_sha)
    rows = {
        r["name"]: r for r in json.loads(run(capsys, "list", "--root", str(tmp_path), "--json")[1])["models"]
    }
    assert rows["RN50"]["state"] == "cached, not yet verified" and rows["RN50"]["size"] == 5
    assert rows["RN101"]["state"] == "verified" and rows["RN101"]["size"] == 3
    status, out, _ = run(capsys, "list", "--root", str(tmp_path))
    assert status == 0 and "ViT-L/14@336px" in out and "verified" in out


# --- download ------------------------------------------------------------------------------


def test_download_command(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "download", "ViT-Z/1", "--root", str(tmp_path))[0] == 2
    rn50 = MODELS["RN50"].split("azureedge.net", 1)[1]
    server.add(rn50, Resource(data=b"not RN50"))
    monkeypatch.setenv("CLIPFAST_MIRROR", server.url(""))
    status, _, err = run(capsys, "download", "RN50", "--root", str(tmp_path))
    assert status == 2 and "SHA-256" in err
    assert server.stats(rn50).requests == 1
    assert not (tmp_path / "RN50.pt").exists()
    monkeypatch.setenv("CLIPFAST_OFFLINE", "1")
    status, _, err = run(capsys, "download", "RN50", "--root", str(tmp_path))
    assert status == 2 and "CLIPFAST_OFFLINE" in err
    assert server.stats(rn50).requests == 1


def test_download_command_fetches_verifies_and_reverifies(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Success (the path printed, the verified file), a second run that trusts the verified-cache
    record (no request), and --verify, which re-hashes and replaces a file damaged in place even
    when its size and mtime still match the record."""
    data = b"stand-in RN50 weights " * 5000
    sha = hashlib.sha256(data).hexdigest()
    route = f"/clip/models/{sha}/RN50.pt"
    monkeypatch.setitem(MODELS, "RN50", server.add(route, Resource(data=data)))
    root = tmp_path / "models"
    status, out, _ = run(capsys, "download", "RN50", "--root", str(root))
    assert status == 0 and out.strip() == str(root / "RN50.pt")
    assert (root / "RN50.pt").read_bytes() == data and server.stats(route).requests == 1
    assert cache.is_verified(str(root / "RN50.pt"), sha)
    # Damaged in place, size and mtime kept: the record still vouches for it.
    stat = os.stat(root / "RN50.pt")
    (root / "RN50.pt").write_bytes(b"X" + data[1:])
    os.utime(root / "RN50.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run(capsys, "download", "RN50", "--root", str(root))[0] == 0
    assert server.stats(route).requests == 1  # trusted, not re-read
    status, out, err = run(capsys, "download", "RN50", "--root", str(root), "--verify")
    assert status == 0 and out.strip() == str(root / "RN50.pt"), err
    assert (root / "RN50.pt").read_bytes() == data and server.stats(route).requests == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLIPFAST_RETRIES", "99999999999"),
        ("CLIPFAST_RETRIES", "1.5"),
        ("CLIPFAST_MIN_RATE", str(2**64)),
        ("CLIPFAST_READ_TIMEOUT", "nan"),
        ("CLIPFAST_CONNECT_TIMEOUT", "inf"),
        ("CLIPFAST_BACKOFF", "1e300"),
    ],
)
def test_download_command_malformed_settings_are_one_line_errors(
    variable: str,
    value: str,
    server: FaultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A setting the engine cannot take (too large for its integer, not finite, past what a
    Duration holds) is exit 2 with one line naming the variable, before any request. A retry count
    past 2**32 escaped as an OverflowError traceback, and nan/inf named the engine's argument."""
    rn50 = MODELS["RN50"].split("azureedge.net", 1)[1]
    server.add(rn50, Resource(data=b"not RN50"))
    monkeypatch.setenv("CLIPFAST_MIRROR", server.url(""))
    monkeypatch.setenv(variable, value)
    status, out, err = run(capsys, "download", "RN50", "--root", str(tmp_path))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and variable in err and "Traceback" not in err, err
    assert server.stats(rn50).requests == 0


# --- inspect -------------------------------------------------------------------------------


def test_inspect_tensors_lists_every_tensor_as_torch_has_it(
    openai_archive: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = openai_archive("ViT-B/32")
    status, out, _ = run(capsys, "inspect", str(path), "--tensors")
    assert status == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ") and ": " in line]
    expected = [f"{k}: {str(v.dtype).removeprefix('torch.')} {list(v.shape)}" for k, v in state.items()]
    assert [line for line in listed if line in expected] == expected
    status, out, _ = run(capsys, "inspect", str(path), "--json")
    assert [(t["name"], t["shape"]) for t in json.loads(out)["tensors"]] == [
        (k, list(v.shape)) for k, v in state.items()
    ]


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_inspect_archive_matches_torch(
    name: str, openai_archive: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = openai_archive(name)
    status, out, _ = run(capsys, "inspect", str(path), "--json")
    assert status == 0, out
    info = json.loads(out)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert info["format"] == "torchscript"
    assert info["tensor_count"] == len(reference)
    expected_dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in reference.values())
    assert info["dtype_counts"] == dict(expected_dtypes)
    assert {t["name"]: t["shape"] for t in info["tensors"]} == {
        k: list(v.shape) for k, v in reference.items()
    }
    arch = infer_architecture(reference)
    assert info["architecture"]["embed_dim"] == arch.embed_dim == _testing.tiny(name).embed_dim
    assert info["architecture"]["kind"] == ("ViT" if "ViT" in name else "ModifiedResNet")
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["official_model"] is None
    status, out, _ = run(capsys, "inspect", str(path))
    assert status == 0 and "torchscript" in out and "architecture:" in out


def test_inspect_names_the_official_model_when_the_hash_matches(
    state_dict_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = state_dict_file("ViT-B/16")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(cli, "_official", lambda: {"ViT-B/16": (sha, "ViT-B-16.pt")})
    status, out, _ = run(capsys, "inspect", str(path), "--json")
    assert status == 0
    info = json.loads(out)
    assert info["format"] == "torch.save"
    assert info["official_model"] == "ViT-B/16"


def test_inspect_takes_an_official_name_as_verify_does(
    state_dict_file: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``clipfast inspect ViT-B/16`` describes the cached file (``--root``), as ``verify`` and
    ``convert`` take names; a name not downloaded says so instead of "not found" beside a list
    that contains it."""
    root = tmp_path / "root"
    root.mkdir()
    cached = root / "ViT-B-16.pt"
    cached.write_bytes(state_dict_file("ViT-B/16").read_bytes())
    sha = hashlib.sha256(cached.read_bytes()).hexdigest()
    monkeypatch.setattr(
        cli, "_official", lambda: {"ViT-B/16": (sha, "ViT-B-16.pt"), "RN50": ("0" * 64, "RN50.pt")}
    )
    status, out, err = run(capsys, "inspect", "ViT-B/16", "--root", str(root), "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["official_model"] == "ViT-B/16" and info["path"] == str(cached)
    status, _, err = run(capsys, "inspect", "RN50", "--root", str(root))
    assert status == 2 and "RN50 is not in the cache" in err and str(root / "RN50.pt") in err


def test_convert_refuses_head_counts_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--vision-heads", "--transformer-heads"):
        with pytest.raises(SystemExit) as stop:
            cli.main(["convert", str(tmp_path / "in.pt"), str(tmp_path / "out.safetensors"), flag, "0"])
        assert stop.value.code == 2
        assert "must be at least 1, not 0" in capsys.readouterr().err


def test_inspect_infers_a_ddp_training_checkpoint(
    state_dict_file: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys saved from a DataParallel wrapper ("module." first) still describe the architecture."""
    state = torch.load(state_dict_file("RN50"), map_location="cpu", weights_only=True)
    path = tmp_path / "ddp.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    status, out, _ = run(capsys, "inspect", str(path), "--json")
    assert status == 0, out
    info = json.loads(out)
    assert info["architecture"]["embed_dim"] == infer_architecture(state).embed_dim
    assert info["architecture"]["kind"] == "ModifiedResNet"
    assert all(t["name"].startswith("module.") for t in info["tensors"])  # the file's own names


@pytest.mark.parametrize("compressed", [False, True])
def test_inspect_describes_an_npz_as_numpy_reads_it(
    compressed: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `clipfast inspect x.npz` refused the file (clipfast.load's error), though inspect_checkpoint reads it.
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "params/img/embedding/kernel": rng.standard_normal((4, 4, 3, 8)).astype(np.float32),
        "params/t": np.float16(2.5).reshape(1),
        "double": rng.standard_normal((2, 3)),
        "ints": np.arange(6, dtype=np.int32).reshape(3, 2),
        "flags": np.array([True, False]),
        "scalar": np.float32(1.0).reshape(()),
        "big_endian": rng.standard_normal((2, 2)).astype(">f2"),  # np.load keeps '>f2': float16
    }
    path = tmp_path / "w.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    reference = np.load(path)
    expected = [(name, reference[name].dtype.name, list(reference[name].shape)) for name in reference.keys()]

    status, out, _ = run(capsys, "inspect", str(path), "--json")
    assert status == 0, out
    info = json.loads(out)
    assert [(t["name"], t["dtype"], t["shape"]) for t in info["tensors"]] == expected
    assert info["format"] == "npz" and info["layout"] == "big_vision"
    assert info["tensor_count"] == len(expected)
    assert info["dtype_counts"] == dict(Counter(dtype for _, dtype, _ in expected))
    assert info["total_bytes"] == sum(reference[name].nbytes for name in reference.keys())
    assert info["file_size"] == path.stat().st_size
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["architecture"] is None and "clipfast.load_checkpoint" in info["architecture_error"]

    status, out, _ = run(capsys, "inspect", str(path), "--tensors")
    assert status == 0 and "format:      npz" in out and "load_checkpoint" in out
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ") and ": " in line]
    assert [f"{name}: {dtype} {shape}" for name, dtype, shape in expected] == listed[-len(expected) :]


def test_inspect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    status, out, _ = run(capsys, "inspect", str(junk), "--json")
    assert status == 2 and str(junk) in json.loads(out)["error"]
    assert run(capsys, "inspect", str(tmp_path / "missing.pt"))[0] == 2


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(clipfast.__file__).resolve().parent.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "clipfast", "list", "--root", str(tmp_path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in json.loads(done.stdout)["models"]] == available_models()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["verify"])
    assert stop.value.code == 2


def test_verify_and_inspect_never_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every attack file (each runs its command under torch.load(weights_only=False), see
    test_checkpoint.test_attacks_are_real): `verify` hashes it (a mismatch, exit 1), `inspect`
    refuses it (exit 2, the global named), and nothing runs."""
    from attacks.malicious import ATTACKS

    for name, write in ATTACKS.items():
        marker = tmp_path / f"ran-{name}"
        path = write(tmp_path / f"{name}.pt", marker)
        status, out, _ = run(capsys, "verify", str(path), "--sha256", "0" * 64, "--json")
        assert status == 1 and json.loads(out)["match"] is False, name
        status, _, err = run(capsys, "inspect", str(path))
        global_name = name.rsplit("-", 1)[1]  # e.g. os.system
        assert status == 2 and global_name in err and "never imports or calls it" in err, (name, err)
        assert not marker.exists(), name
