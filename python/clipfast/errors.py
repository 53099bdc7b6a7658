"""The exceptions clipfast raises. Each subclasses a standard exception, so existing
``except ValueError`` / ``except RuntimeError`` / ``except OSError`` code keeps working."""

from __future__ import annotations

__all__ = [
    "ArchitectureError",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "ImageError",
    "InputError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "OutputFolderError",
    "UnsafeCheckpointError",
    "UnsupportedDtypeError",
]


class CheckpointError(ValueError):
    """A file is not a checkpoint clipfast can read, or it is damaged (the message names the file)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle refers to code (a global outside the allow-list) where a weight must be.

    clipfast never imports or calls such a global; it refuses the file instead."""


class UnsupportedDtypeError(ValueError):
    """``dtype=`` asks for a precision the model being loaded cannot be given with correct numbers
    (a TorchScript archive's graphs fix the dtype of their casts); the message says what can be."""


class ArchitectureError(ValueError):
    """The tensors of a state dict do not describe a CLIP model clipfast can build."""


class ChecksumError(RuntimeError):
    """A file's SHA-256 does not match the expected one (a RuntimeError, as in openai/CLIP)."""


class DownloadError(OSError):
    """A download failed (network error, HTTP error, timeout, out of disk)."""


class ModelNotFoundError(FileNotFoundError, RuntimeError):
    """Neither a known model name nor an existing file (a RuntimeError too, as in openai/CLIP)."""


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed (the message says how to install it)."""


class ImageError(ValueError):
    """An image could not be decoded or preprocessed (the message names the item's index)."""


class InputError(ValueError):
    """An input of ``clipfast embed`` cannot be read as any kind it accepts (the message names it)."""


class OutputFolderError(FileExistsError):
    """An output folder of ``clipfast embed`` holds another job's results (another model, other
    settings or inputs, files that are not clipfast's) or is in use by another run."""
