"""NumPy .npz archives (big_vision's checkpoints) through the Rust reader, compared with numpy."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from clipfast import _native
from clipfast.checkpoint import inspect_checkpoint, read_state_dict
from clipfast.errors import CheckpointError


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "params/img/embedding/kernel": rng.standard_normal((4, 4, 3, 8)).astype(np.float32),
        "params/txt/Embed_0/embedding": rng.standard_normal((11, 8)).astype(np.float32),
        "half": rng.standard_normal((3, 5)).astype(np.float16),
        "double": rng.standard_normal(7),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4, 2)).astype(np.float32)),
        "scalar": np.float32(2.5).reshape(()),
        "ints": np.arange(12, dtype=np.int64).reshape(3, 4),
        "bytes": np.arange(5, dtype=np.uint8),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
    }


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("mmap", [True, False])
def test_npz_gives_numpys_arrays(tmp_path: Path, compressed: bool, mmap: bool) -> None:
    arrays = _arrays()
    path = tmp_path / "w.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    state = read_state_dict(path, mmap=mmap)
    reference = np.load(path)
    assert list(state) == list(reference.keys())
    for key in reference.keys():
        expected = reference[key]
        tensor = state[key]
        assert tuple(tensor.shape) == expected.shape, key
        assert tensor.dtype == torch.from_numpy(np.ascontiguousarray(expected)).dtype, key
        assert (
            tensor.stride() == tuple(s // expected.itemsize for s in expected.strides) or expected.size <= 1
        ), key
        assert np.array_equal(tensor.numpy(), expected), key
    info = inspect_checkpoint(path)
    assert info.format == "npz" and info.tensor_count == len(arrays)
    assert info.total_bytes == sum(a.nbytes for a in arrays.values())


def test_npz_converts_floating_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    arrays = _arrays()
    np.savez_compressed(path, **arrays)
    state = read_state_dict(path, dtype=torch.float16)
    assert state["double"].dtype == torch.float16 and state["ints"].dtype == torch.int64
    assert torch.equal(state["double"], torch.from_numpy(arrays["double"]).half())


def test_stored_npz_members_are_views_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    np.savez(path, **_arrays())
    reader = _native.CheckpointReader(path)
    for _, _, _start, end in reader.storages:
        assert end <= reader.file_size  # every stored member is a range of the file: zero-copy


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"obj.npy": _npy_bytes(np.array([{"a": 1}], dtype=object))}, "object array"),
        (
            {"w.npy": _npy_bytes(np.zeros(3, np.float32)).replace(b"'<f4'", b"'!f4'")},
            "byte order numpy writes",
        ),
        ({"w.npy": _npy_bytes(np.zeros(3, np.float32))[:-4]}, "needs 12 bytes"),
        ({"w.npy": _npy_bytes(np.zeros(3, np.float32)) + b"xxxx"}, "needs 12 bytes"),
        ({"w.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}\n"}, "needs 'descr', 'fortran_order'"),
        ({"w.npy": b"not an array"}, "no \\\\x93NUMPY magic"),
    ],
)
def test_bad_members_are_named(tmp_path: Path, members: dict[str, bytes], message: str) -> None:
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = tmp_path / f"bad-{method}.npz"
        with zipfile.ZipFile(path, "w", compression=method) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        with pytest.raises(CheckpointError, match=rf"bad-{method}.npz: npz member .*\.npy: .*{message}"):
            read_state_dict(path)


def test_a_npy_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.npy"
    np.save(path, np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match=r"w.npy: a single NumPy array \(.npy\), not a checkpoint"):
        read_state_dict(path)


def _damage_first_member(path: Path) -> None:
    """Overwrite 16 bytes in the middle of the data of the archive's first member."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.compress_size // 2
    data[middle : middle + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_damaged_deflated_member_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    np.savez_compressed(path, w=np.arange(4096, dtype=np.float32))
    _damage_first_member(path)
    with pytest.raises(CheckpointError, match=r"w.npz: npz member w.npy"):
        read_state_dict(path)


def _big_endian_arrays() -> dict[str, np.ndarray]:
    """Every multi-byte dtype the reader knows in big-endian order (as np.save writes '>f4' etc.),
    and single-byte ones, which have no byte order."""
    rng = np.random.default_rng(1)
    return {
        "params/img/kernel": rng.standard_normal((4, 3, 2)).astype(">f4"),
        "half": rng.standard_normal((3, 5)).astype(">f2"),
        "double": rng.standard_normal(7).astype(">f8"),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(">f4")),
        "scalar": np.array(2.5, ">f4"),
        "ints": np.arange(-6, 6, dtype=">i8").reshape(3, 4),
        "int32": np.arange(-3, 3, dtype=">i4"),
        "int16": np.arange(-3, 3, dtype=">i2"),
        "uint16": np.arange(5, dtype=">u2") * 4099,
        "complex": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(">c8"),
        "complex128": (rng.standard_normal(2) + 1j).astype(">c16"),
        "bytes": np.arange(5, dtype=">u1"),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 3), ">f4"),
        "little": rng.standard_normal(4).astype("<f4"),
    }


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("mmap", [True, False])
def test_big_endian_members_read_as_numpy_reads_them(tmp_path: Path, compressed: bool, mmap: bool) -> None:
    # Refused before ("only little-endian arrays are supported"), where np.load reads them.
    arrays = _big_endian_arrays()
    path = tmp_path / "w.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    reference = np.load(path)
    assert reference["half"].dtype == np.dtype(">f2")  # numpy keeps the stored order
    state = read_state_dict(path, mmap=mmap)
    assert list(state) == list(reference.keys())
    for key in reference.keys():
        expected = reference[key]
        native = expected.astype(expected.dtype.newbyteorder("="))
        assert state[key].numpy().dtype == native.dtype, key
        assert tuple(state[key].shape) == expected.shape, key
        assert np.array_equal(state[key].numpy(), expected), key
        assert state[key].numpy().tobytes(order="A") == native.tobytes(order="A"), key  # bit for bit
    info = inspect_checkpoint(path)
    assert [(t.name, t.dtype, list(t.shape)) for t in info.tensors] == [
        (key, reference[key].dtype.name, list(reference[key].shape)) for key in reference.keys()
    ]
    assert info.total_bytes == sum(a.nbytes for a in arrays.values())
    converted = read_state_dict(path, dtype=torch.float32)
    assert torch.equal(converted["half"], torch.from_numpy(reference["half"].astype(np.float32)))


def test_big_endian_members_are_not_views_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    np.savez(path, be=np.arange(3, dtype=">f4"), le=np.arange(3, dtype="<f4"), u8=np.arange(3, dtype=">u1"))
    reader = _native.CheckpointReader(path)
    past_end = [key for key, _, _, end in reader.storages if end > reader.file_size]
    assert past_end == ["be.npy"]  # the swapped copy; the others stay zero-copy ranges of the file


@pytest.mark.parametrize("compressed", [False, True])
def test_damaged_big_endian_member_is_an_error(tmp_path: Path, compressed: bool) -> None:
    # A stored member read in place is never CRC-checked; a swapped one is read whole, and checked.
    path = tmp_path / "w.npz"
    (np.savez_compressed if compressed else np.savez)(path, w=np.arange(4096, dtype=">f4"))
    _damage_first_member(path)
    with pytest.raises(CheckpointError, match=r"w.npz: npz member w.npy: .*(CRC-32|inflate)"):
        read_state_dict(path)
    inspect_checkpoint(path)  # the header is intact: described without reading the elements
