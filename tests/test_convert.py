"""clipfast convert: every source layout -> one safetensors file under OpenAI's names whose load gives
the source's model, with the settings in the metadata; dtypes; atomic writes; torch-free CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clipfast
import pytest
import torch
from clipfast import _testing
from clipfast.checkpoint import read_state_dict
from clipfast.convert import convert, expected_shapes, half_precision_keys
from clipfast.errors import ArchitectureError
from clipfast.formats.metadata import read_safetensors_metadata
from open_clip_models import CONFIGS, open_clip_model, write_folder


def _same_models(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def _clip_load(path: Any) -> Any:
    """openai/CLIP's own load of an archive, on the CPU (fp32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip

        model, _ = clip.load(str(path), device="cpu", jit=False)
    return model


def _loaded(path: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converted file needs no guess
        return clipfast.load(str(path), device="cpu", **kwargs)


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_openai_archive(name: str, openai_archive: Callable[[str], Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = openai_archive(name)
    out = tmp_path / "model.safetensors"
    result = convert(source, out)
    assert result.source_format == "openai" and not result.assumed
    model, preprocess = _loaded(out)
    reference, reference_pre = clipfast.load(str(source), device="cpu")
    _same_models(model, reference)
    assert repr(preprocess) == repr(reference_pre)
    # And the model is openai/CLIP's own load of the source (not only clipfast's).
    _same_models(model, _clip_load(source))
    # Every tensor as stored (dtype too), readable by safetensors itself; the archive-only buffers dropped.
    stored = read_state_dict(source)
    written = load_file(out)
    assert set(written) == set(stored) - {"input_resolution", "context_length", "vocab_size"}
    for key, tensor in written.items():
        assert tensor.dtype == stored[key].dtype and torch.equal(tensor, stored[key].reshape(tensor.shape)), (
            key
        )
    meta = read_safetensors_metadata(str(out)) or {}
    assert meta["clipfast.text_act"] == "quick_gelu" and meta["clipfast.source"] == str(source)
    assert meta["clipfast.source_sha256"] == clipfast._native.sha256_file(str(source))
    assert json.loads(meta["clipfast.preprocess"])["mean"] == list(clipfast.transforms.MEAN)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_dtypes(dtype: str, openai_archive: Callable[[str], Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = openai_archive("RN50")
    out = tmp_path / "model.safetensors"
    convert(source, out, dtype=dtype)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    reference, _ = clipfast.load(str(source), device="cpu", dtype=torch_dtype)  # clip's layout for fp16
    written = load_file(out)
    for key, tensor in reference.state_dict().items():
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key
    # openai/CLIP's model (fp32 on the CPU), and its convert_weights layout for fp16.
    import clip.model

    theirs = _clip_load(source)
    if dtype == "fp16":
        clip.model.convert_weights(theirs)
    for key, tensor in theirs.state_dict().items():
        if key in written:
            assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key


def test_open_clip_folder_gelu_and_wide_heads(tmp_path: Path) -> None:
    cfg = CONFIGS["gelu_h80"]
    folder = write_folder(
        tmp_path / "oc",
        cfg,
        open_clip_model("gelu_h80").state_dict(),
        preprocess_cfg={"mean": [0.1, 0.2, 0.3]},
    )
    out = tmp_path / "alone" / "model.safetensors"
    out.parent.mkdir()
    result = convert(folder, out, dtype="fp32")
    assert result.source_format == "open_clip"
    meta = result.metadata
    assert (meta["clipfast.vision_act"], meta["clipfast.text_act"]) == ("gelu", "gelu")
    assert meta["clipfast.vision_heads"] == "2"  # 160 wide, 80-wide heads
    model, preprocess = _loaded(out)
    reference, reference_pre = clipfast.load(str(folder), device="cpu")
    _same_models(model, reference)
    assert preprocess.transforms[-1].mean == (0.1, 0.2, 0.3) == reference_pre.transforms[-1].mean


def test_open_clip_folder_with_another_image_size_is_resized_as_load_does(tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(CONFIGS["gelu_h80"]))
    state = open_clip_model("gelu_h80").state_dict()
    cfg["vision_cfg"]["image_size"] = 48  # fine-tuned at 32 px, configured for 48: resized
    folder = write_folder(tmp_path / "oc", cfg, state)
    out = tmp_path / "model.safetensors"
    convert(folder, out)
    model, _ = _loaded(out)
    reference, _ = clipfast.load(str(folder), device="cpu")
    assert model.visual.positional_embedding.shape[0] == (48 // 8) ** 2 + 1
    _same_models(model, reference)


def test_hf_folder_sharded(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    spec = _testing.HFSpec(vision_width=160, vision_heads=2, vision_act="gelu", text_heads=1, text_act="gelu")
    reference = _testing.build_hf_model(spec)
    folder = _testing.write_hf_folder(tmp_path / "hf", reference, max_shard_size="100KB")
    out = tmp_path / "model.safetensors"
    result = convert(folder, out)
    assert result.source_format == "huggingface"
    shards = json.loads(result.metadata["clipfast.source_shards"])
    assert len(shards) > 1 and all(len(v) == 64 for v in shards.values())
    model, _ = _loaded(out)
    _same_models(model, clipfast.load(str(folder), device="cpu")[0])
    image = torch.randn(2, 3, spec.image_size, spec.image_size)
    with torch.no_grad():
        ours = model.encode_image(image)
        theirs = reference.get_image_features(pixel_values=image).pooler_output
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5


def test_bare_state_dict_records_only_what_is_known(
    state_dict_file: Callable[[str], Path], tmp_path: Path
) -> None:
    source = state_dict_file("ViT-B/32")
    out = tmp_path / "model.safetensors"
    with pytest.warns(UserWarning, match="quick_gelu"):
        result = convert(source, out)
    assert "vision_activation" in result.assumed
    assert "clipfast.vision_act" not in result.metadata and "clipfast.text_act" not in result.metadata
    assert json.loads(result.metadata["clipfast.architecture"])["vision_activation"] is None
    with pytest.warns(UserWarning, match="quick_gelu"):  # still unknown: the load warns again
        clipfast.load(str(out), device="cpu")
    stated = convert(
        source, tmp_path / "stated.safetensors", quick_gelu=True, vision_heads=1, transformer_heads=1
    )
    assert not stated.assumed and stated.metadata["clipfast.vision_act"] == "quick_gelu"
    model, _ = _loaded(tmp_path / "stated.safetensors")
    _same_models(model, clipfast.load(str(source), device="cpu", quick_gelu=True)[0])


def test_expected_shapes_and_half_keys_are_the_models(openai_archive: Callable[[str], Path]) -> None:
    from clipfast.arch import infer_architecture
    from clipfast.model import construct_on_meta, half_precision_names

    for name in ("ViT-B/32", "RN50", "RN50x4"):
        arch = infer_architecture(read_state_dict(openai_archive(name)))
        model = construct_on_meta(arch)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert expected_shapes(arch) == shapes, name
        assert half_precision_keys(arch, shapes) == half_precision_names(model), name


def test_failed_write_leaves_nothing(
    openai_archive: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = openai_archive("ViT-B/32")
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"the old file")

    def broken(self: Any, *args: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(clipfast._native.CheckpointReader, "write_into", broken)
    with pytest.raises(OSError, match="Input/output error"):
        convert(source, out)
    assert out.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with pytest.raises(FileNotFoundError):
        convert(source, tmp_path / "missing" / "x.safetensors")


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_killed_conversions_temporary_file_is_removed_by_the_next(
    openai_archive: Callable[[str], Path], tmp_path: Path
) -> None:
    """A conversion killed before its rename (SIGKILL, power loss) leaves its hidden temporary
    file; the next conversion to the same name removes it once it is unlocked and a minute old,
    never one in progress (locked), a fresh one, or another output's (found by the download probe)."""
    import fcntl

    source = openai_archive("ViT-B/32")
    out = tmp_path / "model.safetensors"
    dies = (
        "import os, sys; from clipfast.convert import convert; "
        "os.replace = lambda *a: os._exit(9); convert(*sys.argv[1:])"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", dies, str(source), str(out)], env=env)
    assert result.returncode == 9
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".model.safetensors.") and left.name.endswith(".tmp")
    old = left.stat().st_mtime - 120
    os.utime(left, (old, old))
    in_progress = tmp_path / ".model.safetensors.1.0123abcd.tmp"
    fresh = tmp_path / ".model.safetensors.2.0123abcd.tmp"
    other = tmp_path / ".other.safetensors.3.0123abcd.tmp"
    for path in (in_progress, fresh, other):
        path.write_bytes(b"x")
    for path in (in_progress, other):
        os.utime(path, (old, old))
    with open(in_progress, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        convert(source, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.safetensors", in_progress.name, fresh.name, other.name]
    )
    _same_models(_loaded(out)[0], _clip_load(source))


def test_refuses_to_write_onto_its_own_source(state_dict_file: Callable[[str], Path], tmp_path: Path) -> None:
    """The output may replace an older file, but not a file of the model being converted: onto a
    state dict (a hard link to it too) or onto a shard or the configuration of a Hugging Face
    folder, convert replaced the source (the folder no longer loaded). Now a FileExistsError, and
    every source file is unchanged; the command exits 2 with one line."""
    import hashlib

    def digests(paths: list[Path]) -> dict[Path, str]:
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}

    source = tmp_path / "rn50.pt"  # a copy: the shared file must survive a failing run
    shutil.copyfile(state_dict_file("RN50"), source)
    before = digests([source])
    link = tmp_path / "link.pt"
    os.link(source, link)
    for out in (source, link):
        with pytest.raises(FileExistsError, match="source"):
            convert(source, out)
    assert digests([source]) == before
    status = subprocess.run(
        [sys.executable, "-m", "clipfast", "convert", str(source), str(source)],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 2 and status.stderr.count("\n") == 1 and "Traceback" not in status.stderr
    assert digests([source]) == before

    pytest.importorskip("transformers")
    spec = _testing.HFSpec(vocab_size=1000)
    folder = _testing.write_hf_folder(tmp_path / "hf", _testing.build_hf_model(spec), max_shard_size="200KB")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    before = digests(files)
    shards = [p for p in files if p.name.startswith("model-")]
    assert len(shards) > 1
    for out in (shards[0], shards[-1], folder / "config.json", folder / "model.safetensors.index.json"):
        with pytest.raises(FileExistsError, match="source"):
            convert(folder, out)
    assert digests(files) == before
    clipfast.load(str(folder), device="cpu")
    # A new file in the same folder is fine.
    convert(folder, folder / "converted.safetensors")
    assert digests(files) == before


def test_not_a_clip_model(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"visual.proj": torch.zeros(2, 2), "x": torch.zeros(1)}, str(path))
    with pytest.raises(ArchitectureError, match=r"other\.safetensors"):
        convert(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_converts_without_importing_torch(openai_archive: Callable[[str], Path], tmp_path: Path) -> None:
    source = openai_archive("ViT-B/32")
    out = tmp_path / "cli.safetensors"
    package = str(Path(clipfast.__file__).parent.parent)
    code = textwrap.dedent(
        f"""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "numpy", "PIL"):
                    raise ImportError("refused: " + name)
        sys.meta_path.insert(0, Refuse())
        # The package without its __init__ (which other modules keep torch-free): convert's own imports.
        import types
        package = types.ModuleType("clipfast")
        package.__path__ = [{package!r} + "/clipfast"]
        sys.modules["clipfast"] = package
        from clipfast.cli import main
        sys.exit(main(["convert", {str(source)!r}, {str(out)!r}, "--dtype", "fp16", "--json"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["path"] == str(out) and report["metadata"]["clipfast.vision_act"] == "quick_gelu"
    model, _ = _loaded(out)
    _same_models(model.float(), clipfast.load(str(source), device="cpu", dtype=torch.float16)[0].float())
    failed = subprocess.run(
        [sys.executable, "-m", "clipfast", "convert", str(tmp_path / "nope.pt"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": package},
        timeout=300,
    )
    assert failed.returncode == 2 and "nope.pt" in failed.stderr
