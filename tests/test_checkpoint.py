"""clipfast.checkpoint against the reference loaders (torch.jit.load, torch.load, safetensors)."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from clipfast import CheckpointError, UnsafeCheckpointError
from clipfast.checkpoint import inspect_checkpoint, read_state_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from attacks.malicious import ATTACKS, EXECUTING, payload, write_torch_zip

ARCHS = ["ViT-B/32", "RN50", "ViT-L/14@336px", "RN50x4"]


def _savable(dtype: torch.dtype) -> bool:
    try:
        torch.save(torch.empty(1, dtype=dtype), io.BytesIO())
    except (KeyError, RuntimeError, TypeError):
        return False
    return True


# Every dtype this torch has and can save (uint16/32/64 came in torch 2.3; torch 2.1 has float8
# dtypes but cannot save them): a file written by an older torch cannot hold the others.
ALL_DTYPES = [
    getattr(torch, name)
    for name in (
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "bool",
        "uint16",
        "uint32",
        "uint64",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if hasattr(torch, name) and _savable(getattr(torch, name))
]


def jit_state_dict(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").state_dict()


def raw(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor's elements, whatever its dtype and layout."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def sharing(sd: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """The partition of names by the storage they view."""
    groups: dict[int, list[str]] = {}
    for name, t in sd.items():
        groups.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    return sorted(groups.values())


def assert_same(ref: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> None:
    assert isinstance(got, OrderedDict)
    assert list(got) == list(ref)
    for name, a in ref.items():
        b = got[name]
        assert type(b) is type(a), name
        assert b.dtype == a.dtype, name
        assert b.shape == a.shape, name
        assert b.stride() == a.stride(), name
        assert b.storage_offset() == a.storage_offset(), name
        assert b.requires_grad == a.requires_grad, name
        assert b.untyped_storage().nbytes() == a.untyped_storage().nbytes(), name
        assert torch.equal(raw(b), raw(a)), name
    assert sharing(got) == sharing(ref)


# --- OpenAI's TorchScript archives and torch.save state dicts, several architectures ---


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("mmap", [True, False])
def test_torchscript_archive_is_jit_state_dict(
    openai_archive: Callable[[str], Path], name: str, mmap: bool
) -> None:
    path = openai_archive(name)
    assert_same(jit_state_dict(path), read_state_dict(path, mmap=mmap))


@pytest.mark.parametrize("name", ARCHS[:2])
def test_state_dict_file_is_torch_load(state_dict_file: Callable[[str], Path], name: str) -> None:
    path = state_dict_file(name)
    assert_same(torch.load(path, weights_only=True), read_state_dict(path))
    assert_same(torch.load(path, weights_only=True), read_state_dict(str(path), mmap=False))


def test_archive_mixes_dtypes_and_skips_plain_attributes(openai_archive: Callable[[str], Path]) -> None:
    path = openai_archive("ViT-B/32")
    sd = read_state_dict(path)
    assert {"input_resolution", "context_length", "vocab_size"} <= set(sd)
    assert sd["visual.conv1.weight"].dtype == torch.float16
    assert sd["ln_final.weight"].dtype == torch.float32
    assert not any("attn_mask" in k for k in sd)
    info = inspect_checkpoint(path)
    assert info.format == "torchscript"
    assert info.tensor_count == len(sd)
    assert [t.name for t in info.tensors] == list(sd)
    assert all(tuple(sd[t.name].shape) == t.shape for t in info.tensors)
    assert info.dtype_counts == {
        str(d).removeprefix("torch."): sum(t.dtype == d for t in sd.values())
        for d in {t.dtype for t in sd.values()}
    }
    assert info.total_bytes == sum(t.untyped_storage().nbytes() for t in sd.values())
    assert str(path) in str(info)


@pytest.mark.parametrize("target", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_archive_dtype_conversion(openai_archive: Callable[[str], Path], target: torch.dtype) -> None:
    path = openai_archive("RN50")
    ref = jit_state_dict(path)
    got = read_state_dict(path, dtype=target)
    assert list(got) == list(ref)
    for name, a in ref.items():
        expected = a.to(target) if a.is_floating_point() else a
        assert got[name].dtype == expected.dtype, name
        assert got[name].stride() == a.stride(), name
        assert torch.equal(raw(got[name]), raw(expected)), name


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_every_16_bit_pattern_widens_as_torch_does(tmp_path: Path, stored: torch.dtype) -> None:
    """fp16 / bf16 -> fp32 (clipfast's vector loop, its unaligned head and its tail) against torch's
    own conversion, for every bit pattern: bf16 bit for bit (torch keeps NaN payloads as they are);
    fp16 bit for bit except NaNs, which torch itself widens differently in its scalar and vector
    paths (even their signs; clipfast's follow F16C, checked in Rust against the half crate)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    path = tmp_path / "patterns.pt"
    whole = bits.view(stored)
    sd = {"all": whole, "odd_start": whole[3:-5], "copy": whole[7:].clone()}
    torch.save(sd, path)
    got = read_state_dict(path, mmap=False, dtype=torch.float32)
    for name, tensor in sd.items():
        want = tensor.to(torch.float32)
        out = got[name]
        assert out.dtype == torch.float32 and out.shape == want.shape
        if stored == torch.bfloat16:
            assert torch.equal(out.view(torch.int32), want.view(torch.int32)), name
        else:
            nan = want.isnan()
            assert torch.equal(out.isnan(), nan), name
            assert torch.equal(out[~nan].view(torch.int32), want[~nan].view(torch.int32)), name


# --- torch.save files made here: every dtype, views, sharing, parameters, wrappers ---


def _every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for dtype in ALL_DTYPES:
        bits = torch.randint(0, 256, (3, 5 * dtype.itemsize), generator=g, dtype=torch.uint8)
        if dtype == torch.bool:
            out["bool"] = bits[:, :5] % 2 == 1
        else:
            out[str(dtype).removeprefix("torch.")] = bits.view(dtype)
    return out


def test_every_dtype(tmp_path: Path) -> None:
    path = tmp_path / "dtypes.pt"
    torch.save(_every_dtype(), path)
    ref = torch.load(path, weights_only=True)
    assert_same(ref, read_state_dict(path))
    assert_same(ref, read_state_dict(path, mmap=False))


def _views() -> dict[str, torch.Tensor]:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    half = torch.randn(4, 8).half()
    return {
        "base": base,
        "transposed": base.t(),
        "row": base[2],
        "strided": base[1::2, ::3],
        "offset_tail": base.view(-1)[37:],
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "scalar_view": base[4, 7],
        "empty": torch.empty(0, 3),
        "empty_shared": base[:0],
        "half": half,
        "half_col": half[:, 5],
        "expanded": torch.ones(3, 1).expand(3, 4),
        "int_view": torch.arange(12).reshape(3, 4)[:, 1:3],
    }


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / f"p{protocol}.pt"
    sd = {**_views(), "p": torch.nn.Parameter(torch.randn(3)), "long_name_" * 30: torch.ones(300)}
    torch.save(sd, path, pickle_protocol=protocol)
    # torch's weights-only unpickler lacks opcodes of protocols 1 (INT) and 4-5 (FRAME); the file is ours.
    assert_same(torch.load(path, weights_only=protocol in (2, 3)), read_state_dict(path))


def test_views_offsets_strides_and_sharing(tmp_path: Path) -> None:
    path = tmp_path / "views.pt"
    torch.save(_views(), path)
    ref = torch.load(path, weights_only=True)
    got = read_state_dict(path)
    assert_same(ref, got)
    assert got["base"].untyped_storage().data_ptr() == got["strided"].untyped_storage().data_ptr()
    assert_same(ref, read_state_dict(path, mmap=False))


def test_conversion_keeps_views_and_sharing(tmp_path: Path) -> None:
    path = tmp_path / "views.pt"
    torch.save(_views(), path)
    ref = torch.load(path, weights_only=True)
    got = read_state_dict(path, dtype=torch.float16)
    assert sharing(got) == sharing(ref)
    for name, a in ref.items():
        b = got[name]
        expected = a.half() if a.is_floating_point() else a
        assert (b.dtype, b.shape, b.stride(), b.storage_offset()) == (
            expected.dtype,
            a.shape,
            a.stride(),
            a.storage_offset(),
        ), name
        assert torch.equal(b, expected), name


def test_dtype_callable_per_name(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    sd = {"a.weight": torch.randn(4, 4).half(), "b.weight": torch.randn(4).bfloat16(), "n": torch.arange(3)}
    torch.save(sd, path)
    seen: list[tuple[str, torch.dtype]] = []

    def plan(name: str, stored: torch.dtype) -> torch.dtype:
        seen.append((name, stored))
        return torch.float32 if name.startswith("a.") else stored

    got = read_state_dict(path, dtype=plan)
    assert seen == [("a.weight", torch.float16), ("b.weight", torch.bfloat16)]
    assert got["a.weight"].dtype == torch.float32 and torch.equal(got["a.weight"], sd["a.weight"].float())
    assert got["b.weight"].dtype == torch.bfloat16 and torch.equal(got["b.weight"], sd["b.weight"])
    assert torch.equal(got["n"], sd["n"])
    with pytest.raises(TypeError):
        read_state_dict(path, dtype=lambda n, d: torch.int32)
    with pytest.raises(TypeError):
        read_state_dict(path, dtype="float32")  # type: ignore[arg-type]


def test_rounding_matches_torch(tmp_path: Path) -> None:
    path = tmp_path / "f32.pt"
    g = torch.Generator().manual_seed(1)
    values = torch.randn(10000, generator=g) * 10.0 ** torch.randint(-9, 6, (10000,), generator=g)
    values = torch.cat([values, torch.tensor([1e6, -1e6, 65520.0, 6e-8, float("inf"), float("nan")])])
    torch.save({"x": values, "d": values.double()}, path)
    for target in (torch.float16, torch.bfloat16):
        got = read_state_dict(path, dtype=target)
        for name, src in (("x", values), ("d", values.double())):
            expected = src.to(target)
            nan = expected.isnan()
            assert torch.equal(got[name].isnan(), nan)  # NaN payloads may differ
            assert torch.equal(raw(got[name][~nan]), raw(expected[~nan])), (target, name)


class ForeignHyperParameters:
    """Stands for an object of the user's training code, pickled into a checkpoint."""

    def __init__(self) -> None:
        self.lr = 0.1


def test_training_checkpoint_with_foreign_objects(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    path = tmp_path / "train.pt"
    torch.save(
        {
            "epoch": 7,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "hparams": ForeignHyperParameters(),
            "nested": {"a": [1, 2.5, "x", None, (True, b"b")]},
        },
        path,
    )
    with pytest.raises(pickle.UnpicklingError):  # torch refuses the whole file in weights_only mode
        torch.load(path, weights_only=True)
    ref = torch.load(path, weights_only=False)["state_dict"]
    assert_same(ref, read_state_dict(path))


def test_parameters_and_model_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "params.pt"
    params = {"w": torch.nn.Parameter(torch.randn(2, 3)), "f": torch.nn.Parameter(torch.ones(2), False)}
    torch.save({"model": params, "step": 3}, path)
    ref = torch.load(path, weights_only=True)["model"]
    got = read_state_dict(path)
    assert isinstance(got["w"], torch.nn.Parameter) and got["w"].requires_grad
    assert_same(ref, got)


def test_mmap_is_copy_on_write_and_copy_owns_memory(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    before = path.read_bytes()
    mapped = read_state_dict(path)["w"]
    mapped += 1  # copy-on-write: the file does not change
    assert path.read_bytes() == before
    copied = read_state_dict(path, mmap=False)["w"]
    with open(path, "r+b") as f:  # truncate in place: the copy does not depend on the file
        f.truncate(0)
    assert torch.equal(copied, torch.zeros(1000))


@pytest.mark.parametrize("via_proc", [True, False], ids=["proc-fd", "descriptor"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_mmap_maps_the_file_that_was_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, via_proc: bool
) -> None:
    """A new file renamed over the path between the parse and the map (a download or conversion
    publishing a new version) does not reach the tensors: they are views of the file parsed, as
    the reference loader read it before the rename, whether torch maps /proc/self/fd/<fd> or
    Python maps the descriptor. (Mapping the path put the old offsets into the new bytes.)"""
    from clipfast import checkpoint
    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(0)
    parsed = {"a": torch.randn(1000, generator=generator), "b": torch.randn(3, 4, generator=generator)}
    published = {"a": torch.randn(8, generator=generator), "b": torch.randn(2000, generator=generator)}
    path, replacement = tmp_path / f"model{suffix}", tmp_path / f"new{suffix}"
    for tensors, file in ((parsed, path), (published, replacement)):
        save_file(tensors, str(file)) if suffix == ".safetensors" else torch.save(tensors, file)
    ref = load_file(str(path)) if suffix == ".safetensors" else torch.load(path, weights_only=True)

    real_open = checkpoint._open

    def parse_then_publish(file: str) -> object:
        reader = real_open(file)
        os.replace(replacement, file)
        return reader

    monkeypatch.setattr(checkpoint, "_open", parse_then_publish)
    if not via_proc:
        monkeypatch.setattr(checkpoint, "_PROC_FD", str(tmp_path / "no-proc"), raising=False)
    got = read_state_dict(path, mmap=True)
    assert not replacement.exists()  # the rename did happen in between
    assert_same(ref, got)


def test_large_copies_own_their_memory_one_storage_each(tmp_path: Path) -> None:
    """Above checkpoint._ARENA_MIN_BYTES the copies are carved out of one huge-page region: each
    still has a storage of its own size (saving one saves only it), stays valid after the file is
    truncated and after the other tensors are freed, and converts to the same values."""
    from clipfast import checkpoint

    path = tmp_path / "big.pt"
    generator = torch.Generator().manual_seed(0)
    ref = {
        "a": torch.randn(1537, 1031, generator=generator).half(),  # odd sizes: alignment of the next
        "b": torch.randn(3, 5, generator=generator),
        "c": torch.randn(2048, 1024, generator=generator),
        "i": torch.arange(7),
    }
    torch.save(ref, path)
    assert os.path.getsize(path) > checkpoint._ARENA_MIN_BYTES
    got = read_state_dict(path, mmap=False, dtype=torch.float32)
    with open(path, "r+b") as f:
        f.truncate(0)
    for name, tensor in got.items():
        expected = ref[name].float() if ref[name].is_floating_point() else ref[name]
        assert torch.equal(tensor, expected), name
        assert tensor.is_contiguous() and tensor.data_ptr() % 64 == 0, name
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
    pointers = sorted((t.data_ptr(), t.data_ptr() + t.untyped_storage().nbytes()) for t in got.values())
    assert all(end <= start for (_, end), (start, _) in zip(pointers, pointers[1:]))  # disjoint
    one = tmp_path / "one.pt"
    torch.save(got["b"], one)
    assert os.path.getsize(one) < 4096
    b = got.pop("b")
    del got
    assert torch.equal(b, ref["b"])
    shapes = [((0,), torch.float32), ((), torch.float64), ((3, 0, 2), torch.float16)]
    shapes.append(((4096, 600), torch.float32))
    made = checkpoint.allocate(shapes)
    assert [(tuple(t.shape), t.dtype) for t in made] == shapes
    assert all(t.is_contiguous() for t in made)


@pytest.mark.skipif(
    not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
    reason="needs Linux with transparent huge pages (/proc/self/smaps marks MADV_HUGEPAGE)",
)
@pytest.mark.parametrize(
    ("free", "balloon", "huge"),
    [
        (True, None, True),
        (False, None, False),
        (True, "0110010100", False),  # a balloon that reports free pages (feature bit 5)
        (True, "0110000100", True),  # a balloon without free page reporting
    ],
    ids=["memory-free", "memory-short", "free-pages-reported", "balloon-without-reporting"],
)
def test_huge_pages_are_asked_for_only_where_they_come_cheap(
    free: bool, balloon: str | None, huge: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With little free memory each huge page costs a direct compaction, and in a VM whose balloon
    reports free pages to the host each one is a block the host took back: the region is then left
    to plain pages (its VmFlags in /proc/self/smaps lack ``hg``, MADV_HUGEPAGE's mark)."""
    from clipfast import checkpoint

    meminfo = tmp_path / "meminfo"
    free_kb = (64 << 30 if free else 1 << 20) // 1024
    meminfo.write_text(f"MemTotal:       99999999 kB\nMemFree:        {free_kb} kB\n")
    monkeypatch.setattr(checkpoint, "_MEMINFO", str(meminfo))
    devices = tmp_path / "virtio"
    for name, device, features in [("virtio0", "0x0002", "1" * 64), ("virtio1", "0x0005", balloon)]:
        if features is not None:
            (devices / name).mkdir(parents=True)
            (devices / name / "device").write_text(device + "\n")
            (devices / name / "features").write_text(features + "0" * 54 + "\n")
    monkeypatch.setattr(checkpoint, "_VIRTIO_DEVICES", str(devices))
    made = checkpoint.allocate([((4096, 1024), torch.float32)])
    address = made[0].data_ptr()
    flags = None
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and line.startswith("VmFlags:"):
                flags = line.split()[1:]
                break
    assert flags is not None
    assert ("hg" in flags) == huge


def test_path_like_and_str(tmp_path: Path) -> None:
    path = tmp_path / "p.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert list(read_state_dict(str(path))) == list(read_state_dict(path)) == ["w"]


# --- safetensors and the legacy format ---


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m.safetensors"
    from safetensors.torch import save

    def supported(t: torch.Tensor) -> bool:  # safetensors 0.4 has no complex64, for one
        try:
            save({"t": t})
        except (KeyError, ValueError, TypeError):
            return False
        return True

    tensors = {k: v.contiguous() for k, v in _every_dtype().items() if k != "complex128" and supported(v)}
    tensors["empty"] = torch.empty(0, 4)
    tensors["scalar"] = torch.tensor(2.0)
    save_file(tensors, str(path), metadata={"format": "pt"})
    ref = load_file(str(path))
    got = read_state_dict(path)
    # The file's order (by data offset), as load_file gives it in safetensors 0.8; 0.4.0 sorts the names.
    size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + size])
    in_file = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    assert list(got) == in_file
    assert sorted(got) == sorted(ref)
    for name, a in ref.items():
        b = got[name]
        assert (b.dtype, b.shape, b.stride()) == (a.dtype, a.shape, a.stride()), name
        assert torch.equal(raw(b), raw(a)), name
    assert inspect_checkpoint(path).format == "safetensors"
    assert read_state_dict(path, dtype=torch.float32)["float16"].dtype == torch.float32


def test_safetensors_unaligned_data_is_copied(tmp_path: Path) -> None:
    """A hand-written file whose float tensor starts at an odd offset (save_file never does)."""
    import json
    import struct

    header = json.dumps(
        {
            "b": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
            "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
        }
    ).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes([1, 2, 3]) + struct.pack("<2f", 1.5, -2))
    for mmap in (True, False):
        got = read_state_dict(path, mmap=mmap)
        assert torch.equal(got["b"], torch.tensor([1, 2, 3], dtype=torch.uint8))
        assert torch.equal(got["f"], torch.tensor([1.5, -2.0]))
    assert torch.equal(read_state_dict(path, dtype=torch.float16)["f"], torch.tensor([1.5, -2.0]).half())


def test_legacy_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


# --- bad input ---


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        read_state_dict(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)


@pytest.mark.parametrize("kind", ["directory", "empty", "text", "half-zip", "tail-cut", "no-eocd"])
def test_damaged_files(tmp_path: Path, openai_archive: Callable[[str], Path], kind: str) -> None:
    good = openai_archive("ViT-B/32").read_bytes()
    path = tmp_path / f"{kind}.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "half-zip":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "tail-cut":
        path.write_bytes(good[:-10])
    else:
        path.write_bytes(good[:-22] + b"\0" * 22)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        inspect_checkpoint(path)


def test_a_named_pipe_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO where a checkpoint should be: opening it for reading used to block until a writer
    came, so read_state_dict, inspect_checkpoint and load_checkpoint hung forever. Run in a child
    process, so that a hang fails the test instead of the suite."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    code = f"""
import torch, clipfast
from clipfast import CheckpointError
from clipfast.checkpoint import inspect_checkpoint, read_state_dict
path = {str(fifo)!r}
def into_a_model(p):
    clipfast.load_checkpoint(torch.nn.Linear(1, 1), p)
for read in (read_state_dict, inspect_checkpoint, into_a_model):
    try:
        read(path)
    except CheckpointError as err:
        assert path in str(err) and "not a regular file" in str(err), err
    else:
        raise AssertionError("read a FIFO")
print("refused")
"""
    _refused_in_a_child(code, "reading a FIFO blocked")


def test_hashing_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """cache.hash_file (what verify, inspect and convert hash with): a FIFO used to block on its
    open, and would then have hashed as the empty file; a directory is refused too, naming it."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    code = f"""
from clipfast import cache
for path in ({str(fifo)!r}, {str(tmp_path)!r}):
    try:
        cache.hash_file(path)
    except OSError as err:
        assert path in str(err) and ("not a regular file" in str(err) or "directory" in str(err)), err
    else:
        raise AssertionError("hashed " + path)
print("refused")
"""
    _refused_in_a_child(code, "hashing a FIFO blocked")


def _refused_in_a_child(code: str, hang: str) -> None:
    """Runs ``code`` in a child process (so that a hang fails the test, saying ``hang``, instead of
    the suite) and expects it to print "refused"."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(hang)
    assert result.returncode == 0 and "refused" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("record", ["data.pkl", "data/0", "code/"])
def test_missing_record(tmp_path: Path, openai_archive: Callable[[str], Path], record: str) -> None:
    src = openai_archive("ViT-B/32")
    path = tmp_path / "missing.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            if item.filename.split("/", 1)[1].startswith(record):
                continue
            zout.writestr(item, zin.read(item.filename))
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    if record == "data/0":
        assert "data/0" in str(info.value)


def test_storage_record_too_short(tmp_path: Path) -> None:
    path = tmp_path / "short.pt"
    torch.save({"w": torch.ones(100)}, path)
    with zipfile.ZipFile(path) as z:
        records = {i.filename: z.read(i.filename) for i in z.infolist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records.items():
            z.writestr(name, data[:10] if name.endswith("data/0") else data)
    with pytest.raises(CheckpointError, match="data/0"):
        read_state_dict(path)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attacks_are_refused_and_nothing_runs(tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "pwned"
    path = ATTACKS[attack](tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    module_name = attack.rsplit("-", 1)[1]
    assert module_name in str(info.value)
    with pytest.raises(UnsafeCheckpointError):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_attacks_are_real(tmp_path: Path) -> None:
    """The attack files do run their command under torch.load(weights_only=False): the test
    above can fail."""
    markers = []
    for name in EXECUTING:
        marker = tmp_path / f"ran-{name}"
        ATTACKS[name](tmp_path / f"{name}.pt", marker)
        markers.append(marker)
    script = (
        "import sys, torch\n"
        "for p in sys.argv[1:]:\n"
        "    try: torch.load(p, weights_only=False)\n"
        "    except Exception: pass\n"
    )
    files = [str(tmp_path / f"{name}.pt") for name in EXECUTING]
    subprocess.run([sys.executable, "-c", script, *files], check=True, timeout=120, cwd=tmp_path)
    assert [m.name for m in markers if not m.exists()] == []


def test_foreign_object_outside_the_weights_is_never_called(tmp_path: Path) -> None:
    """An optimizer/hyper-parameter entry holding os.system(...) does not stop the weights."""
    marker = tmp_path / "pwned"
    weight = (
        b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
        b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89"
        b"ccollections\nOrderedDict\n)RtR"
    )
    body = (
        b"}(X\n\x00\x00\x00state_dict}(X\x01\x00\x00\x00w" + weight + b"u"
        b"X\x07\x00\x00\x00hparams" + payload("os", "system", marker) + b"u"
    )
    path = write_torch_zip(tmp_path / "train.pt", body, {"0": b"\0\0\x80?\0\0\0@"})
    got = read_state_dict(path)
    assert torch.equal(got["w"], torch.tensor([1.0, 2.0]))
    assert not marker.exists()


def test_global_in_place_of_tensor_names_it(tmp_path: Path) -> None:
    path = write_torch_zip(tmp_path / "g.pt", b"}(X\x01\x00\x00\x00wcnumpy\nload\nu")
    with pytest.raises(UnsafeCheckpointError, match=r"numpy\.load"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "tensor",
    [
        lambda: torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.quint8),
        lambda: torch.ones(3, 3).to_sparse(),
        lambda: torch.empty(2, 2, device="meta"),
    ],
    ids=["quantized", "sparse", "meta"],
)
def test_unsupported_tensor_kinds_are_named(tmp_path: Path, tensor: Callable[[], torch.Tensor]) -> None:
    path = tmp_path / "kind.pt"
    torch.save({"ok": torch.ones(1), "w": tensor()}, path)
    with pytest.raises(CheckpointError, match='"w"') as info:
        read_state_dict(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_non_tensor_entry_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "n.pt"
    torch.save({"w": torch.ones(1), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="epoch") as info:
        read_state_dict(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    torch.save(torch.ones(2), path)
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        read_state_dict(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_crash(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(data)
    try:
        read_state_dict(path)
    except CheckpointError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 10**6),
)
def test_corrupted_checkpoints_never_crash(tmp_path: Path, edits: list[tuple[int, int]], cut: int) -> None:
    path = tmp_path / "c.pt"
    if not path.exists():
        torch.save({"a": torch.ones(3, 2).half(), "b": torch.arange(4)[1:], "c": torch.tensor(1.0)}, path)
    good = bytearray((tmp_path / "c.pt").read_bytes())
    for at, value in edits:
        good[at % len(good)] = value
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(good[: max(1, len(good) - cut % 64)]))
    try:
        sd = read_state_dict(bad, mmap=cut % 2 == 0)
        for t in sd.values():
            t.sum() if t.dtype != torch.bool else t.any()
    except CheckpointError:
        pass


def test_deep_and_cyclic_pickles_are_refused_quickly(tmp_path: Path) -> None:
    deep = write_torch_zip(tmp_path / "deep.pt", b"(" * 100000 + b"]" + b"t" * 99999 + b"\x85")
    with pytest.raises(CheckpointError):
        read_state_dict(deep)
    cyclic = write_torch_zip(tmp_path / "cyc.pt", b"}q\x00X\x01\x00\x00\x00ah\x00s")
    with pytest.raises(CheckpointError, match="dict"):
        read_state_dict(cyclic)
    huge = write_torch_zip(tmp_path / "huge.pt", b"X\xff\xff\xff\x7fabc")
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(huge)


def test_no_env_or_cwd_dependence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path)
    monkeypatch.chdir(tmp_path)
    assert list(read_state_dict(os.path.basename(path))) == ["w"]


def test_parse_ahead_hands_over_only_the_same_unchanged_file(tmp_path: Path) -> None:
    """clipfast.load starts the parse of a checkpoint file on a thread while it locates the source;
    the parse is used only where the file is still the one parsed, else the file is parsed again,
    and the errors are those of a plain parse."""
    from clipfast.checkpoint import ParseAhead, _parsed, _plan_read

    first = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3)}
    second = {"b": torch.full((4,), 7.0, dtype=torch.float16)}
    path = tmp_path / "weights.pt"
    torch.save(first, path)

    ahead = ParseAhead.start(str(path))
    assert ahead is not None
    got = _plan_read(path, mmap=False, dtype=torch.float32, reader=ahead.reader(str(path)))
    got.convert()
    assert torch.equal(got.finish()["a"], first["a"].float())

    # Replaced (a new file renamed over it) after the parse started: the new file is read.
    ahead = ParseAhead.start(str(path))
    assert ahead is not None
    replacement = tmp_path / "new.pt"
    torch.save(second, replacement)
    os.replace(replacement, path)
    got = _plan_read(path, mmap=False, dtype=torch.float32, reader=ahead.reader(str(path)))
    got.convert()
    assert list(got.finish()) == ["b"]

    # A damaged file: the parse ahead fails quietly, the read reports it as a plain parse does.
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    ahead = ParseAhead.start(str(path))
    assert ahead is not None
    with pytest.raises(CheckpointError, match=r"weights\.pt"):
        _plan_read(path, mmap=False, dtype=torch.float32, reader=ahead.reader(str(path)))

    # A safetensors file named .pt is refused whichever parse reads it.
    from safetensors.torch import save_file

    save_file(first, str(path))
    with pytest.raises(CheckpointError, match="rename it to what it is"):
        _plan_read(path, mmap=False, dtype=torch.float32, reader=_parsed(path, ParseAhead.start(str(path))))

    # Not a regular file: nothing is started.
    assert ParseAhead.start(str(tmp_path)) is None
    assert ParseAhead.start(str(tmp_path / "missing.pt")) is None


def _storage_jobs(path: Path) -> tuple[object, list[tuple[int, int, str]], list[torch.Tensor]]:
    """The reader of ``path``, its storages' (start, end, dtype) and torch.load's tensors."""
    from clipfast import _native

    reader = _native.CheckpointReader(path)
    spans = [(start, end, dtype) for _, dtype, start, end in reader.storages]
    return reader, spans, list(torch.load(path, weights_only=True).values())


def _fixed(nbytes: int) -> torch.Tensor:
    """A zeroed uint8 tensor whose storage cannot be resized (as load's region), for convert_into."""
    return torch.frombuffer(bytearray(nbytes), dtype=torch.uint8)


def test_convert_into_fills_one_destination_on_its_own_threads(tmp_path: Path) -> None:
    """``convert_into`` returns at once; ``wait`` gives the values torch converts to (float16 ->
    float32, bfloat16 -> float64, float32 copied), each at its offset of the one destination."""
    path = tmp_path / "mixed.pt"
    generator = torch.Generator().manual_seed(0)
    ref = {
        "h": torch.randn(300, 7, generator=generator).half(),
        "b": torch.randn(1000, generator=generator).bfloat16(),
        "f": torch.randn(64, 65, generator=generator),
    }
    torch.save(ref, path)
    reader, spans, loaded = _storage_jobs(path)
    targets = {"float16": "float32", "bfloat16": "float64", "float32": "float32"}
    destination = _fixed(1 << 20)
    jobs, at = [], 64
    for start, end, dtype in spans:
        jobs.append((start, end, dtype, at, targets[dtype]))
        at += (end - start) // 2 * 8 + 64  # room enough for any of the three
    conversion = reader.convert_into(destination, jobs)
    conversion.wait()
    assert conversion.done
    conversion.wait()  # a second wait returns at once
    for (_, _, dtype, offset, target), tensor in zip(jobs, loaded):
        wanted = getattr(torch, target)
        got = destination[offset : offset + tensor.numel() * wanted.itemsize].view(wanted)
        assert torch.equal(got, tensor.reshape(-1).to(wanted)), dtype


def test_convert_into_refuses_bad_jobs_before_writing(tmp_path: Path) -> None:
    """Jobs outside the destination or overlapping, a destination that is not a contiguous CPU
    uint8 tensor or whose storage could be resized (freed under the threads), a source past the
    file's end: typed errors naming the file, and nothing written."""
    path = tmp_path / "one.pt"
    torch.save({"w": torch.arange(256, dtype=torch.float16)}, path)
    reader, [(start, end, dtype)], _ = _storage_jobs(path)
    destination = _fixed(4096)
    whole = (start, end, dtype, 0, "float32")  # 1 KiB of float32
    cases = {
        "outside": (destination, [(start, end, dtype, 4096 - 256, "float32")]),
        "overlapping": (destination, [whole, (start, end, dtype, 512, "float32")]),
        # An empty job inside the first, sorted between the two: their overlap is still found.
        "overlapping past an empty job": (
            destination,
            [whole, (start, start, dtype, 256, "float32"), (start, end, dtype, 512, "float32")],
        ),
        "huge offset": (destination, [(start, end, dtype, 2**63, "float32")]),
        "not uint8": (torch.frombuffer(bytearray(4096), dtype=torch.float32), [whole]),
        "not contiguous": (_fixed(8192)[::2], [whole]),
        "resizable": (torch.zeros(4096, dtype=torch.uint8), [whole]),
    }
    for name, (into, jobs) in cases.items():
        with pytest.raises(CheckpointError, match=r"one\.pt") as info:
            reader.convert_into(into, jobs)
        assert "destination" in str(info.value), name
    # A source outside the file is found by the conversion's own check, before it writes anything.
    size = os.path.getsize(path)
    conversion = reader.convert_into(destination, [(size - 256, size + 256, dtype, 0, "float32")])
    with pytest.raises(CheckpointError, match="outside the file"):
        conversion.wait()
    assert not destination.any()


def test_a_conversion_dropped_unwaited_is_waited_for(tmp_path: Path) -> None:
    """Dropping a running conversion (a load failing for another reason) waits for its threads,
    which write into memory the dropped tensors own: no write lands in freed memory."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.randn(4 << 20).half()}, path)
    reader, [(start, end, dtype)], [tensor] = _storage_jobs(path)
    for _ in range(5):
        destination = _fixed(16 << 20)
        conversion = reader.convert_into(destination, [(start, end, dtype, 0, "float32")])
        del conversion, destination  # the conversion holds the destination until its threads end
    kept = _fixed(16 << 20)
    reader.convert_into(kept, [(start, end, dtype, 0, "float32")]).wait()
    assert torch.equal(kept.view(torch.float32), tensor.float())


def test_a_conversion_waited_for_from_several_threads(tmp_path: Path) -> None:
    """``wait`` from several threads at once: each returns once the values are there (none early,
    none with an error of its own)."""
    import threading

    path = tmp_path / "big.pt"
    torch.save({"w": torch.randn(32 << 20).half()}, path)  # long enough to be waited for together
    reader, [(start, end, dtype)], [tensor] = _storage_jobs(path)
    expected = tensor.float()
    for _ in range(2):
        destination = _fixed(128 << 20)
        conversion = reader.convert_into(destination, [(start, end, dtype, 0, "float32")])
        outcomes: list[object] = []

        def wait(
            conversion: object = conversion,
            destination: torch.Tensor = destination,
            outcomes: list[object] = outcomes,
        ) -> None:
            try:
                conversion.wait()  # type: ignore[attr-defined]
                outcomes.append(torch.equal(destination.view(torch.float32), expected))
            except Exception as error:  # reported below
                outcomes.append(error)

        threads = [threading.Thread(target=wait) for _ in range(4)]
        for thread in threads:
            thread.start()
        polled = [conversion.done for _ in range(100)]  # never raises while a wait() joins
        for thread in threads:
            thread.join()
        assert outcomes == [True] * 4 and conversion.done and all(isinstance(p, bool) for p in polled)
