"""The package itself: it imports fast, without torchvision or network, and its surface is explicit."""

from __future__ import annotations

import subprocess
import sys

import clipfast


def test_public_surface_is_explicit() -> None:
    for name in clipfast.__all__:
        assert hasattr(clipfast, name), name


def test_available_models_in_clip_order() -> None:
    import clip  # the reference

    assert clipfast.available_models() == clip.available_models()


def test_import_does_not_pull_torchvision_or_network() -> None:
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise AssertionError('network used at import')\n"
        "socket.socket.connect = refuse\n"
        "import clipfast\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "clipfast.clip._transform(224), clipfast.simple_tokenizer\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported by clipfast.clip'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_subclass_standard_exceptions() -> None:
    assert issubclass(clipfast.CheckpointError, ValueError)
    assert issubclass(clipfast.UnsafeCheckpointError, clipfast.CheckpointError)
    assert issubclass(clipfast.ArchitectureError, ValueError)
    assert issubclass(clipfast.ChecksumError, RuntimeError)
    assert issubclass(clipfast.ModelNotFoundError, FileNotFoundError)
    assert issubclass(clipfast.ModelNotFoundError, RuntimeError)
