"""Writers of hostile checkpoints. Each one is a real attack: loading it with ``pickle`` /
``torch.load(weights_only=False)`` would run the command (``touch <marker>``); clipfast must
refuse it without running anything.

The pickles are written opcode by opcode so that they name exactly the global under test
(``os.system`` rather than ``posix.system``, which ``pickle.dumps`` would write on Linux).
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "ATTACKS",
    "EXECUTING",
    "payload",
    "write_torch_zip",
]

_FLOAT_STORAGE = b"ctorch\nFloatStorage\n"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _tensor_pickle(key: str) -> bytes:
    """Opcodes that push ``_rebuild_tensor_v2(storage key, 0, (2,), (1,), False, OrderedDict())``."""
    storage = b"(" + _str("storage") + _FLOAT_STORAGE + _str(key) + _str("cpu") + b"K\x02tQ"
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage
        + b"K\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rt"
        + b"R"
    )


def write_torch_zip(path: Path, pickle_body: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A torch.save-style zip: ``archive/data.pkl`` = PROTO 2 + ``pickle_body`` + STOP."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + pickle_body + b".")
        z.writestr("archive/byteorder", b"little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return path


def _dict(*pairs: tuple[str, bytes]) -> bytes:
    return b"}(" + b"".join(_str(k) + v for k, v in pairs) + b"u"


_WEIGHT = struct.pack("<2f", 1.0, 2.0)


def payload(module: str, name: str, marker: Path, *, stack_global: bool = False) -> bytes:
    """Opcodes that push ``module.name(...)`` with arguments that create ``marker`` when called."""
    if name in ("eval", "exec"):
        args = _str(f"__import__('os').system('touch {marker}')") + b"\x85"
    elif name == "Popen":
        args = b"](" + _str("touch") + _str(str(marker)) + b"e\x85"
    else:
        args = _str(f"touch {marker}") + b"\x85"
    if stack_global:
        func = _str(module) + _str(name) + b"\x93"
    else:
        func = f"c{module}\n{name}\n".encode()
    return func + args + b"R"


def _root_call(module: str, name: str, stack_global: bool = False) -> Callable[[Path, Path], Path]:
    def write(path: Path, marker: Path) -> Path:
        return write_torch_zip(path, payload(module, name, marker, stack_global=stack_global))

    return write


def _weight_call(module: str, name: str, stack_global: bool = False) -> Callable[[Path, Path], Path]:
    def write(path: Path, marker: Path) -> Path:
        body = _dict(
            ("visual.proj", _tensor_pickle("0")),
            ("ln_final.weight", payload(module, name, marker, stack_global=stack_global)),
        )
        return write_torch_zip(path, body, {"0": _WEIGHT})

    return write


def _storage_type(path: Path, marker: Path) -> Path:
    """A foreign call where the storage type of a tensor should be."""
    evil = payload("os", "system", marker)
    body = _dict(("w", _tensor_pickle("0").replace(_FLOAT_STORAGE, evil)))
    return write_torch_zip(path, body, {"0": _WEIGHT})


def _torch_method(path: Path, marker: Path) -> Path:
    """A global from torch itself that is not a rebuild function (torch.load would refuse it)."""
    body = _dict(("w", b"ctorch\nsave\n(" + _str(str(marker)) + b"tR"))
    return write_torch_zip(path, body)


def _state_dict_wrapper(path: Path, marker: Path) -> Path:
    """The weights under "state_dict" contain an eval call."""
    inner = _dict(("a", _tensor_pickle("0")), ("b", payload("builtins", "eval", marker)))
    return write_torch_zip(path, _dict(("state_dict", inner), ("epoch", b"K\x03")), {"0": _WEIGHT})


#: name -> writer(path, marker): files whose weights include code, or that are code; calling the
#: code creates the marker file.
ATTACKS: dict[str, Callable[[Path, Path], Path]] = {
    "root-os.system": _root_call("os", "system"),
    "root-posix.system": _root_call("posix", "system"),
    "root-builtins.eval": _root_call("builtins", "eval", stack_global=True),
    "root-subprocess.Popen": _root_call("subprocess", "Popen"),
    "weight-os.system": _weight_call("os", "system"),
    "weight-builtins.eval": _weight_call("builtins", "eval", stack_global=True),
    "weight-builtins.exec": _weight_call("builtins", "exec"),
    "weight-subprocess.Popen": _weight_call("subprocess", "Popen"),
    "storage-type-os.system": _storage_type,
    "weight-torch.save": _torch_method,
    "state_dict-builtins.eval": _state_dict_wrapper,
}

#: The attacks that really run a command when torch.load(weights_only=False) reads them.
EXECUTING = [name for name in ATTACKS if name != "weight-torch.save"]
