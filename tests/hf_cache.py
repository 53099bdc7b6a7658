"""Hugging Face Hub fixtures without the network: a cache laid out exactly as huggingface_hub lays it
out, and a local stand-in for the hub's file endpoint.

Cache layout (``huggingface_hub.file_download``)::

    <cache>/models--ORG--NAME/
        blobs/<etag>                      the bytes (etag: sha256 for LFS files, git blob sha1 else)
        refs/main                         the commit hash, no newline
        snapshots/<commit>/<file>         relative symlink -> ../../blobs/<etag>
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Union
from urllib.parse import unquote

Content = Union[bytes, str, Path]

#: Files at least this large are stored by the hub with Git LFS (etag = sha256).
LFS_THRESHOLD = 1024


def _bytes(content: Content) -> bytes:
    if isinstance(content, Path):
        return content.read_bytes()
    return content.encode() if isinstance(content, str) else content


def etag(data: bytes) -> str:
    """The etag the hub gives a file: sha256 for LFS files, the git blob sha1 for small ones."""
    if len(data) >= LFS_THRESHOLD:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def commit_of(files: Mapping[str, Content]) -> str:
    """A deterministic 40-hex commit id for a set of files."""
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + etag(_bytes(files[name])).encode())
    return h.hexdigest()


def write_cached_repo(
    cache: Path,
    repo_id: str,
    files: Mapping[str, Content],
    *,
    ref: str = "main",
    commit: str | None = None,
) -> Path:
    """Put ``files`` of ``repo_id`` into the cache at ``cache`` as huggingface_hub would after
    downloading them; returns the snapshot folder. Large files (``Path``) are linked, not copied."""
    commit = commit or commit_of(files)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = _bytes(content)
        blob = repo / "blobs" / etag(data)
        if not blob.exists():
            if isinstance(content, Path):
                os.link(content, blob) if _same_device(content, blob.parent) else blob.write_bytes(data)
            else:
                blob.write_bytes(data)
        pointer = snapshot / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def _same_device(a: Path, folder: Path) -> bool:
    return os.stat(a).st_dev == os.stat(folder).st_dev


class FakeHub:
    """The hub's ``/{repo_id}/resolve/{revision}/{filename}`` endpoint on 127.0.0.1 (HEAD and GET),
    with the headers huggingface_hub reads (X-Repo-Commit, ETag, Content-Length, X-Error-Code).

    ``repos``: repo_id -> {commit: {filename: bytes}}, ``refs``: repo_id -> {"main": commit}.
    ``requests`` records every (method, path)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.refs: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, repo_id: str, files: Mapping[str, Content], *, ref: str = "main") -> str:
        """Add a commit with ``files`` and point ``ref`` at it; returns the commit id."""
        data = {name: _bytes(content) for name, content in files.items()}
        commit = commit_of(files)
        self.repos.setdefault(repo_id, {})[commit] = data
        self.refs.setdefault(repo_id, {})[ref] = commit
        return commit

    def _answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((request.command, request.path))
        path = unquote(request.path.split("?", 1)[0]).lstrip("/")
        parts = path.split("/resolve/", 1)
        if len(parts) != 2 or parts[0] not in self.repos:
            return self._error(request, 404, "RepoNotFound")
        repo_id, rest = parts
        revision, _, filename = rest.partition("/")
        commits = self.repos[repo_id]
        commit = self.refs[repo_id].get(revision, revision)
        if commit not in commits:
            return self._error(request, 404, "RevisionNotFound")
        data = commits[commit].get(filename)
        if data is None:
            return self._error(request, 404, "EntryNotFound", commit)
        request.send_response(200)
        request.send_header("X-Repo-Commit", commit)
        request.send_header("ETag", f'"{etag(data)}"')
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    @staticmethod
    def _error(request: BaseHTTPRequestHandler, status: int, code: str, commit: str | None = None) -> None:
        request.send_response(status)
        request.send_header("X-Error-Code", code)
        if commit:
            request.send_header("X-Repo-Commit", commit)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
