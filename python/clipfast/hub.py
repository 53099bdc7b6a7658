"""``hf-hub:ORG/NAME[@REVISION]`` names: files of a Hugging Face Hub repository, through ``huggingface_hub``.

``huggingface_hub`` is an optional dependency (``pip install 'clipfast[hf]'``), imported only when a
hub name is resolved online; offline, the cache is read directly and the package is not needed. Files
land in, and are read from, Hugging Face's own cache, so what ``transformers`` or ``open_clip``
downloaded before is reused as it is:

- the cache folder is ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``), read when a name is resolved;
- offline (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, or ``CLIPFAST_OFFLINE=1``, which implies
  it) nothing touches the network: the files come from the cache, and a repository that is not
  there is a ``ModelNotFoundError`` naming it;
- online, when the hub cannot be reached, a revision whose snapshot is cached is read from the cache
  as offline (as huggingface_hub and transformers fall back to it): a file that snapshot lacks is
  absent, so files that the repository never had (which huggingface_hub does not record as
  such for every file a load looks for) do not make the load fail.

All files of one :class:`HubRepo` come from one commit: the first file resolved pins it, so a
repository updated between two downloads cannot mix the files of two versions.

Torch-free: the CLI's commands that do not build a model import this module.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from .errors import DownloadError, MissingDependencyError, ModelNotFoundError

__all__ = ["PREFIX", "HubName", "HubRepo", "cache_dir", "is_hub_name", "is_offline", "parse_hub_name"]

#: The scheme of hub names, as open_clip spells it.
PREFIX = "hf-hub:"

_TRUE = {"1", "true", "yes", "on"}
#: What the hub accepts as a repository id: ``name`` or ``namespace/name``.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
INSTALL_HINT = "pip install 'clipfast[hf]' (or: pip install huggingface_hub)"


@dataclass(frozen=True)
class HubName:
    """A parsed ``hf-hub:`` name: the repository id and an optional revision (branch, tag or commit)."""

    repo_id: str
    revision: Optional[str] = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{at}"


def is_hub_name(name: object) -> bool:
    """True for a string that starts with ``hf-hub:``."""
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_hub_name(name: str) -> HubName:
    """``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME@REVISION`` -> :class:`HubName`; a malformed name is a
    ``ModelNotFoundError`` naming it (a repository id has at most one ``/`` and no ``..``)."""
    if not is_hub_name(name):
        raise ModelNotFoundError(f"{name!r} is not a hub name (expected {PREFIX}ORG/NAME)")
    body = name[len(PREFIX) :].strip()
    repo_id, _, revision = body.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ModelNotFoundError(f"{name}: {repo_id!r} is not a Hugging Face repository id (ORG/NAME)")
    if "@" in body and not revision:
        raise ModelNotFoundError(f"{name}: empty revision after '@'")
    return HubName(repo_id, revision or None)


def cache_dir() -> str:
    """Hugging Face's hub cache folder, from the environment as huggingface_hub reads it."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(variable)
        if value:
            return os.path.expandvars(os.path.expanduser(value))
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "huggingface")
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


def _offline_variable() -> Optional[str]:
    for variable in ("CLIPFAST_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE:
            return variable
    return None


def is_offline() -> bool:
    """True when downloads from the hub are off (``CLIPFAST_OFFLINE``, ``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` set to 1/true/yes/on)."""
    return _offline_variable() is not None


def _huggingface_hub(name: object) -> ModuleType:
    try:
        import huggingface_hub
        import huggingface_hub.errors  # a submodule its lazy top level does not load by itself
    except ImportError as err:
        raise MissingDependencyError(
            f"{name}: hf-hub: names need the huggingface_hub package, which is not installed: {INSTALL_HINT}",
            name="huggingface_hub",
        ) from err
    return huggingface_hub


def repo_folder(repo_id: str, root: Optional[str] = None) -> str:
    """The cache folder of a model repository: ``<cache>/models--ORG--NAME``."""
    return os.path.join(root or cache_dir(), "models--" + repo_id.replace("/", "--"))


class HubRepo:
    """One repository of the hub, whose files are fetched (or found in the cache) one by one.

    ``file(name)`` returns the local path of a file (a path in the cache's ``snapshots/<commit>/``
    folder), or None when the repository has no such file (online), or when it is not cached
    (offline). Errors name the hub name: ``ModelNotFoundError`` for a repository or revision that
    does not exist (or, offline, is not in the cache), ``DownloadError`` when the hub cannot be
    reached and nothing is cached, ``MissingDependencyError`` without huggingface_hub."""

    def __init__(self, name: str | HubName) -> None:
        self.name = name if isinstance(name, HubName) else parse_hub_name(name)
        self.cache = cache_dir()
        self.offline_because = _offline_variable()
        self._hub: Optional[ModuleType] = None
        if self.offline_because is None:
            self._hub = _huggingface_hub(self.name)
            if getattr(getattr(self._hub, "constants", None), "HF_HUB_OFFLINE", False):
                self.offline_because = "HF_HUB_OFFLINE"  # as huggingface_hub read it when imported
        #: The commit every file comes from, once the first one is resolved.
        self.commit: Optional[str] = None
        #: Why the hub could not be reached, once a download failed and the cache answers instead.
        self.unreachable: Optional[str] = None
        if self.offline_because is not None:
            self.commit = self._cached_commit()

    @property
    def offline(self) -> bool:
        return self.offline_because is not None

    @property
    def folder(self) -> Optional[str]:
        """The snapshot folder of the pinned commit (None until a file was resolved online)."""
        if self.commit is None:
            return None
        return os.path.join(repo_folder(self.name.repo_id, self.cache), "snapshots", self.commit)

    def _cache_lookup(self) -> tuple[Optional[str], str]:
        """The commit the revision names in the cache when its snapshot is there, else None and
        why it is not."""
        folder = repo_folder(self.name.repo_id, self.cache)
        if not os.path.isdir(folder):
            return None, f"{self.name} is not in the Hugging Face cache ({folder} does not exist)"
        revision = self.name.revision or "main"
        commit = revision
        if not _COMMIT.match(revision):
            try:
                with open(os.path.join(folder, "refs", revision), encoding="utf-8") as f:
                    commit = f.read().strip()
            except OSError:
                return None, (
                    f"{self.name}: revision {revision!r} is not in the Hugging Face cache "
                    f"({folder}/refs/{revision} does not exist)"
                )
        if not _COMMIT.match(commit) or not os.path.isdir(os.path.join(folder, "snapshots", commit)):
            return None, (
                f"{self.name}: the cached revision {revision!r} points to commit {commit!r}, "
                f"whose snapshot is not in {folder}/snapshots"
            )
        return commit, ""

    def _cached_commit(self) -> str:
        """Offline: the commit the revision names in the cache, else a ModelNotFoundError."""
        commit, why_not = self._cache_lookup()
        if commit is None:
            raise ModelNotFoundError(f"{why_not} and downloads are off ({self.offline_because}=1)")
        return commit

    def file(self, filename: str) -> Optional[str]:
        """The local path of ``filename`` of this repository, downloaded when needed (see the class)."""
        parts = filename.split("/")
        if (
            not filename
            or filename.startswith("/")
            or "\\" in filename
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise ValueError(f"{self.name}: {filename!r} is not a file name inside the repository")
        if self.offline or self.unreachable is not None:
            return self._cached(parts)
        hub = self._hub
        assert hub is not None
        errors = hub.errors
        try:
            path = hub.hf_hub_download(
                self.name.repo_id,
                filename,
                revision=self.commit or self.name.revision,
                cache_dir=self.cache,
            )
        except errors.RevisionNotFoundError as err:
            raise ModelNotFoundError(
                f"{self.name}: revision not found on the hub: {_first_line(err)}"
            ) from err
        except errors.RepositoryNotFoundError as err:  # also gated and private repositories
            raise ModelNotFoundError(
                f"{self.name}: repository not found on the hub (or private / gated: log in with "
                f"`hf auth login` or set HF_TOKEN): {_first_line(err)}"
            ) from err
        except errors.LocalEntryNotFoundError as err:
            # The hub could not be reached (or huggingface_hub itself is offline) and the file is
            # not cached for this revision. Where the revision's snapshot is cached, it answers for
            # this file and the next ones (huggingface_hub returns the cached files then, and
            # transformers takes a file the snapshot lacks as absent); else nothing can be loaded.
            commit = self.commit or self._cache_lookup()[0]
            if commit is None:
                raise DownloadError(
                    f"{self.name}: cannot fetch {filename} from the hub and it is not in the cache "
                    f"{self.cache}: {_first_line(err)}"
                ) from err
            self.commit, self.unreachable = commit, _first_line(err)
            warnings.warn(
                f"{self.name}: the hub could not be reached ({self.unreachable}); loading the cached "
                f"snapshot {commit[:12]}, which may not be the revision's latest",
                UserWarning,
                stacklevel=2,
            )
            return self._cached(parts)
        except getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError):
            return None  # the repository has no such file
        except (OSError, ValueError) as err:
            raise DownloadError(f"{self.name}: fetching {filename} failed: {_first_line(err)}") from err
        if self.commit is None:
            commit = os.path.basename(os.path.dirname(_snapshot_relative(path, filename)))
            if _COMMIT.match(commit):
                self.commit = commit
        return str(path)

    def _cached(self, parts: Sequence[str]) -> Optional[str]:
        """The file of the pinned commit's snapshot, or None when the snapshot lacks it."""
        assert self.commit is not None
        path = os.path.join(self.folder or "", *parts)
        return path if os.path.isfile(path) else None

    def first(self, filenames: Sequence[str]) -> Optional[tuple[str, str]]:
        """``(filename, path)`` of the first of ``filenames`` the repository has (see ``file``), or None."""
        for filename in filenames:
            path = self.file(filename)
            if path is not None:
                return filename, path
        return None

    def describe_missing(self, what: str, filenames: Sequence[str]) -> str:
        """A message for a repository without any of ``filenames``."""
        if self.offline:
            where = f"cached in {self.folder} ({self.offline_because}=1: nothing is downloaded)"
        elif self.unreachable is not None:
            where = f"cached in {self.folder} (the hub could not be reached: {self.unreachable})"
        else:
            where = "in the repository"
        return f"{self.name}: no {what} ({', '.join(filenames)}) {where}"

    def missing(self, what: str, filenames: Sequence[str], detail: str = "") -> Exception:
        """The error for a repository without any of ``filenames``: a ``DownloadError`` when the
        hub could not be reached (they may be there, just not cached), else a
        ``ModelNotFoundError``."""
        message = self.describe_missing(what, filenames) + detail
        return DownloadError(message) if self.unreachable is not None else ModelNotFoundError(message)


def _snapshot_relative(path: str, filename: str) -> str:
    """``path`` without the trailing components of ``filename`` (``.../snapshots/<commit>/x``)."""
    for _ in filename.split("/")[1:]:
        path = os.path.dirname(path)
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
