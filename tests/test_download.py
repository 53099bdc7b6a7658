"""Downloads against a local fault-injecting HTTP server (127.0.0.1 only), the verified cache,
offline mode and the mirror variable. Timeouts and backoff are made small through the environment."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import clipfast
import pytest
from clipfast import _native, cache
from clipfast import download as dl
from clipfast.errors import ChecksumError, DownloadError, ModelNotFoundError
from clipfast.registry import MODELS, sha256_of_url
from conftest import local_network
from http_fault_server import ConnectProxy, FaultServer, Resource

PYTHON_DIR = str(Path(clipfast.__file__).resolve().parent.parent)

# Child processes load only the download part of the package (not torch, which takes seconds to
# import on a loaded two-core machine): an empty package object stands in for clipfast/__init__.
CHILD_PRELUDE = (
    "import sys, types\n"
    "pkg = types.ModuleType('clipfast')\n"
    f"pkg.__path__ = [{str(Path(clipfast.__file__).resolve().parent)!r}]\n"
    "sys.modules['clipfast'] = pkg\n"
    "from clipfast.download import download\n"
)


@pytest.fixture(autouse=True)
def fast_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local_network(monkeypatch, tmp_path)


def payload(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"clipfast-{seed}".encode()).digest(size)


def add_file(server: FaultServer, name: str, data: bytes, **faults: object) -> str:
    sha = hashlib.sha256(data).hexdigest()
    return server.add(f"/clip/models/{sha}/{name}", Resource(data=data, **faults))  # type: ignore[arg-type]


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.endswith((".part", ".part.meta")))


# --- SHA-256 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "hexdigest"),
    [
        (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ],
)
def test_sha256_known_vectors(data: bytes, hexdigest: str) -> None:
    assert _native.Sha256(data).hexdigest() == hexdigest
    assert hashlib.sha256(data).hexdigest() == hexdigest


def test_sha256_incremental_and_file_match_hashlib(tmp_path: Path) -> None:
    data = payload(3_000_001, seed=7)
    h = _native.Sha256()
    for i in range(0, len(data), 65_537):
        h.update(data[i : i + 65_537])
    assert h.length == len(data)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.digest() == hashlib.sha256(data).digest()
    copy = h.copy()
    copy.update(b"x")
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert copy.hexdigest() == hashlib.sha256(data + b"x").hexdigest()
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert _native.sha256_file(f) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert _native.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    with pytest.raises(FileNotFoundError):
        _native.sha256_file(tmp_path / "missing")


# --- plain and faulty transfers --------------------------------------------------------------


def test_download_verifies_and_reports_total(server: FaultServer, tmp_path: Path) -> None:
    data = payload(1_500_000)
    url = add_file(server, "m.pt", data)
    seen: list[tuple[int, int | None]] = []
    path = clipfast.download(url, root=str(tmp_path), progress=lambda done, total: seen.append((done, total)))
    assert path == str(tmp_path / "m.pt")
    assert Path(path).read_bytes() == data
    assert seen and seen[-1] == (len(data), len(data))
    assert any(total == len(data) for _, total in seen)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert leftovers(tmp_path) == []
    assert cache.read_record(path) == cache.VerifiedRecord(
        hashlib.sha256(data).hexdigest(), len(data), os.stat(path).st_mtime_ns
    )


def test_sha256_taken_from_url_or_required(server: FaultServer, tmp_path: Path) -> None:
    data = payload(1000)
    url = server.add("/files/plain.bin", Resource(data=data))
    with pytest.raises(ValueError, match="sha256"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert server.stats("/files/plain.bin").requests == 0
    path = clipfast.download(url, root=str(tmp_path), sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert Path(path).read_bytes() == data
    other = tmp_path / "unverified"
    path2 = clipfast.download(url, root=str(other), sha256=False, progress=False)
    assert Path(path2).read_bytes() == data
    with pytest.raises(ValueError, match="64 hexadecimal"):
        clipfast.download(url, root=str(tmp_path / "x"), sha256="abc", progress=False)


def test_wrong_bytes_raise_checksum_error_and_leave_nothing(server: FaultServer, tmp_path: Path) -> None:
    data = payload(200_000)
    url = add_file(server, "bad.pt", data, corrupt=True)
    with pytest.raises(ChecksumError):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert not (tmp_path / "bad.pt").exists()
    assert leftovers(tmp_path) == []
    assert issubclass(ChecksumError, RuntimeError)


def test_404_fails_at_once(server: FaultServer, tmp_path: Path) -> None:
    url = server.url("/clip/models/" + "0" * 64 + "/missing.pt")
    with pytest.raises(DownloadError, match="404"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert server.stats(path_of(url)).requests == 1
    assert not (tmp_path / "missing.pt").exists()


def test_500_then_ok_is_retried(server: FaultServer, tmp_path: Path) -> None:
    data = payload(50_000)
    url = add_file(server, "flaky.pt", data, statuses=[500, 503])
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    assert server.stats(path_of(url)).statuses == [500, 503, 200]


def test_persistent_500_gives_up(server: FaultServer, tmp_path: Path) -> None:
    url = add_file(server, "dead.pt", payload(10), statuses=[500] * 10)
    with pytest.raises(DownloadError, match="gave up after 3 tries"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert server.stats(path_of(url)).requests == 3
    assert not (tmp_path / "dead.pt").exists()


def _refused_base() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["unresolvable", "refused"])
def test_unreachable_host_fails_fast_naming_offline_and_mirror(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine without network access: clipfast.load of a model that is not cached fails within a
    few seconds (one quick retry, not five with backoff), and says what to set. With the default
    settings (5 retries, 1 s backoff doubling) this took 31 s. `.invalid` names never resolve and
    are never sent to a DNS server (RFC 6761)."""
    for var in ("CLIPFAST_RETRIES", "CLIPFAST_BACKOFF", "CLIPFAST_CONNECT_TIMEOUT", "CLIPFAST_READ_TIMEOUT"):
        monkeypatch.delenv(var)
    base = "http://clipfast-test.invalid" if kind == "unresolvable" else _refused_base()
    monkeypatch.setenv("CLIPFAST_MIRROR", base)
    start = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        clipfast.load("ViT-B/32", device="cpu", download_root=str(tmp_path))
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert elapsed < 4, (elapsed, message)
    assert "CLIPFAST_OFFLINE" in message and "CLIPFAST_MIRROR" in message, message
    assert "gave up after 2 tries" in message, message
    host = "clipfast-test.invalid" if kind == "unresolvable" else "127.0.0.1"
    assert f"cannot reach {host}" in message, message
    assert not (tmp_path / "ViT-B-32.pt").exists() and leftovers(tmp_path) == []
    # No retry at all when none is asked for.
    monkeypatch.setenv("CLIPFAST_RETRIES", "0")
    with pytest.raises(DownloadError, match="gave up after 1 tries"):
        dl.resolve_model("ViT-B/32", root=str(tmp_path))


def test_refused_then_listening_is_retried_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one quick retry: a host that refuses the first connection and listens by the second
    (a server restarting) still gives the file."""
    monkeypatch.setenv("CLIPFAST_BACKOFF", "1")  # the quick retry waits min(backoff, 0.5 s)
    base = _refused_base()
    port = int(base.rsplit(":", 1)[1])
    data = payload(20_000)
    sha = hashlib.sha256(data).hexdigest()
    started: list[FaultServer] = []

    def listen_later() -> None:
        time.sleep(0.2)
        late = FaultServer(port=port)
        late.add(f"/clip/models/{sha}/late.pt", Resource(data=data))
        started.append(late)

    thread = threading.Thread(target=listen_later, daemon=True)
    thread.start()
    try:
        path = clipfast.download(f"{base}/clip/models/{sha}/late.pt", root=str(tmp_path), progress=False)
        assert Path(path).read_bytes() == data
        assert started[0].stats(f"/clip/models/{sha}/late.pt").requests == 1
    finally:
        thread.join()
        for server in started:
            server.stop()


def test_no_content_length_is_accepted(server: FaultServer, tmp_path: Path) -> None:
    data = payload(300_000)
    url = add_file(server, "nolen.pt", data, content_length=False)
    seen: list[tuple[int, int | None]] = []
    path = clipfast.download(url, root=str(tmp_path), progress=lambda d, t: seen.append((d, t)))
    assert Path(path).read_bytes() == data
    assert seen[-1] == (len(data), len(data))


def test_redirect_is_followed(server: FaultServer, tmp_path: Path) -> None:
    data = payload(70_000)
    target = add_file(server, "real.pt", data)
    sha = hashlib.sha256(data).hexdigest()
    url = server.add(f"/clip/models/{sha}/moved.pt", Resource(data=b"", redirect_to=path_of(target)))
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert path == str(tmp_path / "moved.pt")
    assert Path(path).read_bytes() == data
    assert server.stats(path_of(target)).requests == 1


def test_dropped_connection_resumes_only_missing_bytes(server: FaultServer, tmp_path: Path) -> None:
    data = payload(1_000_000)
    url = add_file(server, "drop.pt", data, drop_after=400_000, drop_times=1)
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    stats = server.stats(path_of(url))
    assert stats.statuses == [200, 206]
    assert stats.ranges == [None, "bytes=400000-"]
    assert stats.body_bytes == len(data)  # nothing sent twice


def test_resume_across_calls_and_no_partial_at_final_path(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(800_000, seed=3)
    url = add_file(server, "later.pt", data, drop_after=300_000, drop_times=5)
    monkeypatch.setenv("CLIPFAST_RETRIES", "0")
    with pytest.raises(DownloadError, match="300000 of 800000"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert not (tmp_path / "later.pt").exists()
    assert (tmp_path / "later.pt.part").stat().st_size == 300_000
    server.resources[path_of(url)].drop_times = 0
    before = server.stats(path_of(url)).body_bytes
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    stats = server.stats(path_of(url))
    assert stats.ranges[-1] == "bytes=300000-"
    assert stats.body_bytes - before == len(data) - 300_000
    assert leftovers(tmp_path) == []


def test_changed_remote_file_restarts_cleanly(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = payload(600_000, seed=1), payload(600_000, seed=2)
    url = server.add("/files/changing.bin", Resource(data=old, drop_after=250_000, drop_times=1))
    monkeypatch.setenv("CLIPFAST_RETRIES", "0")
    with pytest.raises(DownloadError):
        clipfast.download(url, root=str(tmp_path), sha256=hashlib.sha256(new).hexdigest(), progress=False)
    assert (tmp_path / "changing.bin.part").exists()
    # The file changes on the server: new ETag and date, so If-Range yields the whole new file.
    server.resources["/files/changing.bin"] = Resource(
        data=new, last_modified="Wed, 02 Jan 2030 00:00:00 GMT"
    )
    path = clipfast.download(url, root=str(tmp_path), sha256=hashlib.sha256(new).hexdigest(), progress=False)
    assert Path(path).read_bytes() == new
    stats = server.stats("/files/changing.bin")
    assert stats.statuses[-1] == 200  # not a splice of old and new bytes


def test_server_ignoring_if_range_is_caught_by_validator(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that honours Range but not If-Range: the 206's ETag shows the change."""
    old, new = payload(400_000, seed=4), payload(400_000, seed=5)
    url = server.add("/files/sloppy.bin", Resource(data=old, drop_after=100_000, drop_times=1))
    monkeypatch.setenv("CLIPFAST_RETRIES", "0")
    sha_new = hashlib.sha256(new).hexdigest()
    with pytest.raises(DownloadError):
        clipfast.download(url, root=str(tmp_path), sha256=sha_new, progress=False)
    server.resources["/files/sloppy.bin"] = Resource(data=new, etag='"new"', honour_if_range=False)
    monkeypatch.setenv("CLIPFAST_RETRIES", "1")
    path = clipfast.download(url, root=str(tmp_path), sha256=sha_new, progress=False)
    assert Path(path).read_bytes() == new
    assert server.stats("/files/sloppy.bin").statuses[-2:] == [206, 200]


def test_slow_drip_past_read_timeout(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(300_000)
    url = add_file(server, "drip.pt", data, drip_after=1000, drip_seconds=3.0, drip_times=1)
    monkeypatch.setenv("CLIPFAST_READ_TIMEOUT", "0.4")
    monkeypatch.setenv("CLIPFAST_RETRIES", "0")
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"timeout|timed out"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert time.monotonic() - start < 2.5
    assert not (tmp_path / "drip.pt").exists()
    # With a retry it resumes after the stall and succeeds.
    server.resources[path_of(url)].drip_times = 1
    monkeypatch.setenv("CLIPFAST_RETRIES", "1")
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data


def test_stale_partial_without_record_is_discarded(server: FaultServer, tmp_path: Path) -> None:
    data = payload(100_000)
    url = add_file(server, "stale.pt", data)
    (tmp_path / "stale.pt.part").write_bytes(b"garbage from a dead process")
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    assert server.stats(path_of(url)).ranges == [None]
    assert leftovers(tmp_path) == []


def test_disk_space_is_checked_first(server: FaultServer, tmp_path: Path) -> None:
    url = add_file(server, "huge.pt", b"x", fake_length=1 << 60)
    with pytest.raises(DownloadError, match="not enough disk space"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert not (tmp_path / "huge.pt").exists()


def test_expected_size_bounds_the_body(server: FaultServer, tmp_path: Path) -> None:
    data = payload(50_000)
    sha = hashlib.sha256(data).hexdigest()
    url = add_file(server, "sized.pt", data)
    with pytest.raises(DownloadError, match="announces 50000 bytes, expected 50001"):
        _native.fetch(url, tmp_path / "sized.pt", sha, expected_size=50_001, retries=0)
    assert not (tmp_path / "sized.pt").exists()
    # No Content-Length and a body cut short: the expected size tells it is short, and it resumes.
    short = add_file(server, "short.pt", data, content_length=False, drop_after=20_000, drop_times=1)
    report = _native.fetch(
        short, tmp_path / "short.pt", sha, expected_size=len(data), retries=1, backoff=0.01
    )
    assert (tmp_path / "short.pt").read_bytes() == data
    assert (report.size, report.attempts, report.transferred) == (len(data), 2, len(data))
    assert server.stats(path_of(short)).ranges == [None, "bytes=20000-"]


# A body without Content-Length cut short: chunked, whose last chunk never comes (after a clean
# close or a reset), or close-delimited, ended by a reset (a clean close is where such a body ends).
CUTS = {
    "chunked, closed": {"chunked": True},
    "chunked, reset": {"chunked": True, "reset": True},
    "close-delimited, reset": {"content_length": False, "reset": True},
}


@pytest.mark.parametrize("ranges", [True, False], ids=["Range", "no Range"])
@pytest.mark.parametrize("cut", list(CUTS))
def test_body_without_length_cut_short_is_resumed(
    server: FaultServer, tmp_path: Path, cut: str, ranges: bool
) -> None:
    """Cut once (every body here ends as the cut one did, the whole one too): the next request
    asks for the rest with Range and If-Range; a server with Range support sends only it, one
    without sends the whole file again. Either way the verified file is published."""
    data = payload(400_000, seed=11)
    url = add_file(
        server, "cut.pt", data, drop_after=150_000, drop_times=1, support_range=ranges, **CUTS[cut]
    )
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    assert leftovers(tmp_path) == []
    stats = server.stats(path_of(url))
    assert stats.ranges == [None, "bytes=150000-"]
    assert stats.statuses == ([200, 206] if ranges else [200, 200])
    assert stats.body_bytes == (len(data) if ranges else 150_000 + len(data))


def test_body_without_length_cut_every_time_resumes_later(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut on every try: a DownloadError once the retries are spent (not a ChecksumError), nothing at
    the final path, and the bytes kept resume in the next call."""
    data = payload(400_000, seed=12)
    url = add_file(
        server, "cuts.pt", data, content_length=False, reset=True, drop_after=150_000, drop_times=9
    )
    with pytest.raises(DownloadError, match="gave up after 3 tries"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert not (tmp_path / "cuts.pt").exists()
    assert (tmp_path / "cuts.pt.part").stat().st_size == 150_000
    server.resources[path_of(url)].drop_times = 0
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    assert server.stats(path_of(url)).ranges[-1] == "bytes=150000-"
    assert leftovers(tmp_path) == []


def test_body_without_length_ended_cleanly_with_wrong_hash_is_a_checksum_error(
    server: FaultServer, tmp_path: Path
) -> None:
    """A close-delimited body closed cleanly after 150000 of 400000 bytes (for HTTP, that is where
    it ends), and a whole chunked body of wrong bytes: a ChecksumError after the one request,
    nothing at the final path."""
    data = payload(400_000, seed=13)
    cases = {
        "closed.pt": {"content_length": False, "drop_after": 150_000, "drop_times": 1},
        "chunked.pt": {"chunked": True, "corrupt": True},
    }
    for name, faults in cases.items():
        url = add_file(server, name, data, **faults)
        with pytest.raises(ChecksumError, match="nothing was kept"):
            clipfast.download(url, root=str(tmp_path), progress=False)
        assert server.stats(path_of(url)).requests == 1, name
        assert not (tmp_path / name).exists() and leftovers(tmp_path) == [], name


@pytest.mark.parametrize("ranges", [True, False], ids=["Range", "no Range"])
def test_wrong_bytes_ended_by_a_reset_are_a_checksum_error(
    server: FaultServer, tmp_path: Path, ranges: bool
) -> None:
    """Wrong bytes (not cut) in a close-delimited body that ends with a reset: taken for a cut once
    (the resume is refused with 416 and the file comes again, or it comes again at once); the
    same bytes ending at the same byte again are the server's file: a ChecksumError, nothing kept."""
    data = payload(300_000, seed=14)
    url = add_file(
        server, "wrong.pt", data, content_length=False, reset=True, corrupt=True, support_range=ranges
    )
    with pytest.raises(ChecksumError, match="nothing was kept"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert server.stats(path_of(url)).statuses == ([200, 416, 200] if ranges else [200, 200])
    assert not (tmp_path / "wrong.pt").exists() and leftovers(tmp_path) == []


def test_reset_before_any_body_byte_is_a_dropped_connection(server: FaultServer, tmp_path: Path) -> None:
    """A close-delimited body reset after its head, before any body byte: a dropped connection on
    every try (not two 'fresh bodies alike', which would make the empty body the server's file and
    raise ChecksumError), so the retries decide; a later whole body is published."""
    data = payload(200_000, seed=16)
    url = add_file(server, "empty.pt", data, content_length=False, reset=True, drop_after=0, drop_times=9)
    with pytest.raises(DownloadError, match=r"before any body byte.*gave up after 3 tries"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert not (tmp_path / "empty.pt").exists()
    server.resources[path_of(url)].drop_times = 2
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    assert server.stats(path_of(url)).statuses[-3:] == [200, 200, 200]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ranges", [True, False], ids=["Range", "no Range"])
def test_unverified_body_without_length_cut_is_not_published(
    server: FaultServer, tmp_path: Path, ranges: bool
) -> None:
    """sha256=False: a close-delimited body ended by a reset is a cut transfer all the same (no hash
    can tell), never published as the file: resumed with Range, where a 416 saying the kept bytes
    are the whole file ends it, or, without Range, fetched until two bodies agree."""
    data = payload(300_000, seed=17)
    url = add_file(
        server,
        "free.pt",
        data,
        content_length=False,
        reset=True,
        drop_after=100_000,
        drop_times=1,
        support_range=ranges,
    )
    path = clipfast.download(url, root=str(tmp_path), sha256=False, progress=False)
    assert Path(path).read_bytes() == data
    assert leftovers(tmp_path) == []
    stats = server.stats(path_of(url))
    # With Range the 206 announces the length (Content-Range): whole at once.
    assert stats.statuses == ([200, 206] if ranges else [200, 200, 200])
    # Whole on the first try, ended by a reset: confirmed by a 416, or by a second body alike.
    whole = add_file(server, "whole.pt", data, content_length=False, reset=True, support_range=ranges)
    path = clipfast.download(whole, root=str(tmp_path), sha256=False, progress=False)
    assert Path(path).read_bytes() == data
    assert server.stats(path_of(whole)).statuses == ([200, 416] if ranges else [200, 200])
    # With the hash, such a body is taken at once.
    hashed = add_file(server, "hashed.pt", data, content_length=False, reset=True, support_range=ranges)
    clipfast.download(hashed, root=str(tmp_path), progress=False)
    assert server.stats(path_of(hashed)).statuses == [200]


def test_target_that_is_a_folder_is_an_error(server: FaultServer, tmp_path: Path) -> None:
    url = add_file(server, "dir.pt", b"abc")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(DownloadError, match="not a regular file"):
        clipfast.download(url, root=str(tmp_path), progress=False)


# --- the verified cache ---------------------------------------------------------------------


def counting_hash(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = cache.hash_file

    def spy(path: object) -> str:
        calls.append(str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "hash_file", spy)
    return calls


def test_verified_cache_is_not_rehashed_until_it_changes(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(500_000)
    url = add_file(server, "cached.pt", data)
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    calls = counting_hash(monkeypatch)
    assert clipfast.download(url, root=str(tmp_path), progress=False) == path
    assert calls == []  # trusted from the record
    assert server.stats(path_of(url)).requests == 1
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # mtime changed: re-hash once
    clipfast.download(url, root=str(tmp_path), progress=False)
    assert calls == [path]
    clipfast.download(url, root=str(tmp_path), progress=False)
    assert calls == [path]  # the new record is trusted again
    assert server.stats(path_of(url)).requests == 1


def test_record_invalidated_by_size_change(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"hello")
    sha = hashlib.sha256(b"hello").hexdigest()
    assert cache.verify_file(f, sha)
    assert cache.is_verified(f, sha)
    assert not cache.is_verified(f, "0" * 64)
    st = f.stat()
    with open(f, "ab") as fh:
        fh.write(b"!")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, other size
    assert not cache.is_verified(f, sha)
    assert not cache.verify_file(f, sha)
    assert cache.read_record(f) is None


def test_corrupted_cached_file_is_replaced_with_a_warning(server: FaultServer, tmp_path: Path) -> None:
    data = payload(400_000)
    url = add_file(server, "rot.pt", data)
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    with open(path, "r+b") as fh:  # flip one byte, as bit rot or a clobbering copy would
        fh.seek(1234)
        byte = fh.read(1)
        fh.seek(1234)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.warns(UserWarning, match="SHA256 checksum does not match; re-downloading"):
        again = clipfast.download(url, root=str(tmp_path), progress=False)
    assert again == path
    assert Path(path).read_bytes() == data
    assert server.stats(path_of(url)).requests == 2
    # Corrupted again, and now the server sends wrong bytes: the bad file does not survive either.
    Path(path).write_bytes(b"rot" + data[3:])
    server.resources[path_of(url)].corrupt = True
    with pytest.warns(UserWarning, match="re-downloading"), pytest.raises(ChecksumError):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert not Path(path).exists()
    assert leftovers(tmp_path) == []


def test_verify_true_forces_a_rehash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_model trusts a record; verify=True re-hashes, finds the file bad, and (offline) says so."""
    sha = sha256_of_url(MODELS["RN50"])
    assert sha is not None
    fake = tmp_path / "RN50.pt"
    fake.write_bytes(b"not the real RN50")
    cache.write_record(fake, sha)  # a record that lies about the content
    monkeypatch.setenv("CLIPFAST_OFFLINE", "1")
    calls = counting_hash(monkeypatch)
    assert dl.resolve_model("RN50", root=str(tmp_path)) == str(fake)
    assert calls == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ChecksumError):
            dl.resolve_model("RN50", root=str(tmp_path), verify=True)
    assert calls == [str(fake)]


def test_read_only_shared_cache(server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified files in a folder nobody may write to: used in place, no lock, records elsewhere."""
    data = payload(100_000)
    url = add_file(server, "shared.pt", data)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "shared.pt").write_bytes(data)  # placed by an admin, no record
    # Root ignores permission bits: the record beside the file is made impossible another way too.
    monkeypatch.setattr(cache, "record_path", lambda p: Path("/proc/clipfast-read-only") / Path(p).name)

    def no_lock(path: object) -> None:
        raise AssertionError(f"a verified file needs no lock ({path})")

    monkeypatch.setattr(dl._native, "FileLock", no_lock)
    shared.chmod(0o555)
    try:
        calls = counting_hash(monkeypatch)
        assert clipfast.download(url, root=str(shared), progress=False) == str(shared / "shared.pt")
        assert clipfast.download(url, root=str(shared), progress=False) == str(shared / "shared.pt")
        assert len(calls) == 1  # the record went to the user's cache
        assert list((tmp_path / "xdg" / "clipfast" / "verified").iterdir())
        assert server.stats(path_of(url)).requests == 0
        assert sorted(p.name for p in shared.iterdir()) == ["shared.pt"]
    finally:
        shared.chmod(0o755)


# --- environment: offline, mirror -----------------------------------------------------------


def test_offline_never_touches_the_network(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(1000)
    url = add_file(server, "off.pt", data)
    monkeypatch.setenv("CLIPFAST_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="CLIPFAST_OFFLINE"):
        clipfast.download(url, root=str(tmp_path), progress=False)
    with pytest.raises(ModelNotFoundError):
        dl.resolve_model("ViT-B/32", root=str(tmp_path))
    assert server.stats(path_of(url)).requests == 0
    monkeypatch.delenv("CLIPFAST_OFFLINE")
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    monkeypatch.setenv("CLIPFAST_OFFLINE", "1")
    assert clipfast.download(url, root=str(tmp_path), progress=False) == path


def test_mirror_replaces_official_host(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(30_000)
    sha = hashlib.sha256(data).hexdigest()
    server.add(f"/prefix/clip/models/{sha}/mirrored.pt", Resource(data=data))
    monkeypatch.setenv("CLIPFAST_MIRROR", server.url("/prefix/"))
    official = f"https://openaipublic.azureedge.net/clip/models/{sha}/mirrored.pt"
    assert dl.mirror_url(official) == server.url(f"/prefix/clip/models/{sha}/mirrored.pt")
    assert dl.mirror_url("https://example.org/a/b.pt") == "https://example.org/a/b.pt"
    path = clipfast.download(official, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == data
    # A named model goes to the mirror too (these bytes are not RN50's: the hash check refuses them).
    rn50 = MODELS["RN50"].split("azureedge.net", 1)[1]
    server.add("/prefix" + rn50, Resource(data=b"not RN50"))
    with pytest.raises(ChecksumError):
        dl.resolve_model("RN50", root=str(tmp_path))
    assert server.stats("/prefix" + rn50).requests >= 1
    assert not (tmp_path / "RN50.pt").exists()
    monkeypatch.setenv("CLIPFAST_MIRROR", "not a url")
    with pytest.raises(ValueError, match="CLIPFAST_MIRROR"):
        dl.mirror_url(official)


def test_resolve_model_names_and_paths(tmp_path: Path) -> None:
    f = tmp_path / "own.pt"
    f.write_bytes(b"x")
    assert dl.resolve_model(str(f)) == str(f)
    with pytest.raises(ModelNotFoundError, match="available models"):
        dl.resolve_model("ViT-X/99", root=str(tmp_path))
    with pytest.raises(RuntimeError):
        dl.resolve_model("ViT-X/99", root=str(tmp_path))


def test_empty_download_root_means_the_default_as_in_clip(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openai/CLIP's load takes ``download_root or ~/.cache/clip``: an empty string (an unset
    setting passed through) is its default cache, where clipfast used the working folder (a second
    copy of the model there, and an existing clip cache not reused)."""
    import inspect

    import clip

    assert 'download_root or os.path.expanduser("~/.cache/clip")' in inspect.getsource(clip.load)
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    data = payload(20_000)
    monkeypatch.setitem(MODELS, "RN50", add_file(server, "RN50.pt", data))
    expected = home / ".cache" / "clip" / "RN50.pt"
    assert dl.resolve_model("RN50", root="") == str(expected)
    assert expected.read_bytes() == data and list(work.iterdir()) == []
    assert dl.resolve_model("RN50", root="") == str(expected)  # cached: no second request
    assert server.stats(path_of(MODELS["RN50"])).requests == 1


def test_module_is_callable_and_has_the_contract_names() -> None:
    assert callable(clipfast.download)
    assert clipfast.download.resolve_model is dl.resolve_model  # type: ignore[attr-defined]
    assert dl.default_root() == os.path.expanduser("~/.cache/clip")


# --- proxies ------------------------------------------------------------------------------


def test_proxy_from_environment_and_no_proxy(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As curl reads them: an http URL goes through http_proxy (or ALL_PROXY), never HTTPS_PROXY nor
    an upper-case HTTP_PROXY (curl ignores it: CGI programs get it from a request header); NO_PROXY
    bypasses. ureq's own reading took the first of ALL_PROXY, HTTPS_PROXY, HTTP_PROXY whatever the
    scheme, so HTTPS_PROXY carried http downloads and HTTP_PROXY https ones."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    proxy = ConnectProxy()
    try:
        data = payload(120_000)
        url = add_file(server, "proxied.pt", data)
        got = 0

        def fetch() -> None:
            nonlocal got
            got += 1
            path = clipfast.download(url, root=str(tmp_path / str(got)), progress=False)
            assert Path(path).read_bytes() == data

        for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY"):  # not for an http URL: direct
            monkeypatch.setenv(var, proxy.url)
            fetch()
            assert proxy.tunnels == [], var
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("NO_PROXY", "example.invalid")
        fetch()
        assert proxy.tunnels == [f"127.0.0.1:{server.port}"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        fetch()
        assert len(proxy.tunnels) == 1  # bypassed
        monkeypatch.delenv("http_proxy")
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        fetch()
        assert len(proxy.tunnels) == 2
        assert server.stats(path_of(url)).requests == got
    finally:
        proxy.stop()


def test_an_unreachable_proxy_is_named(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the proxy refuses the connection, the message names the proxy and its variable, not the
    server behind it (which was said to be unreachable)."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    refused = _refused_base()
    port = refused.rsplit(":", 1)[1]
    monkeypatch.setenv("http_proxy", refused)
    url = add_file(server, "behind.pt", payload(1000))
    with pytest.raises(DownloadError) as caught:
        clipfast.download(url, root=str(tmp_path), progress=False)
    message = str(caught.value)
    assert f"cannot reach the proxy 127.0.0.1:{port} (from http_proxy)" in message, message
    assert "CLIPFAST_OFFLINE" in message
    assert server.stats(path_of(url)).requests == 0


# --- TLS: the system store and SSL_CERT_FILE -----------------------------------------------


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=clipfast test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def test_https_trusts_ssl_cert_file_only(tmp_path: Path) -> None:
    ca, cert, key = make_test_ca(tmp_path)
    tls_server = FaultServer(tls=(str(cert), str(key)))
    try:
        data = payload(150_000)
        url = add_file(tls_server, "secure.pt", data)
        assert url.startswith("https://127.0.0.1:")
        code = CHILD_PRELUDE + (
            "try:\n"
            "    print(download(sys.argv[1], root=sys.argv[2], progress=False))\n"
            "except OSError as err:\n"
            "    print(type(err).__name__, err)\n"
        )
        base = {**os.environ, "PYTHONPATH": PYTHON_DIR, "CLIPFAST_RETRIES": "3"}
        trusted = subprocess.run(
            [sys.executable, "-c", code, url, str(tmp_path / "a")],
            env={**base, "SSL_CERT_FILE": str(ca), "SSL_CERT_DIR": str(tmp_path / "none")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert trusted.stdout.strip() == str(tmp_path / "a" / "secure.pt"), trusted.stdout + trusted.stderr
        assert (tmp_path / "a" / "secure.pt").read_bytes() == data
        # Another store that lacks the test CA: refused at once (no retries for a bad certificate).
        other = tmp_path / "other.pem"
        other.write_text(cert.read_text())  # the leaf is no CA
        untrusted = subprocess.run(
            [sys.executable, "-c", code, url, str(tmp_path / "b")],
            env={**base, "SSL_CERT_FILE": str(other), "SSL_CERT_DIR": str(tmp_path / "none")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert untrusted.stdout.startswith("DownloadError"), untrusted.stdout + untrusted.stderr
        assert "certificate" in untrusted.stdout and "tries" not in untrusted.stdout
        assert not (tmp_path / "b" / "secure.pt").exists()
        assert tls_server.stats(path_of(url)).requests == 1
    finally:
        tls_server.stop()


def test_https_body_without_length_closed_without_close_notify_is_resumed(tmp_path: Path) -> None:
    """Over TLS a close-delimited body ends with close_notify; a plain close before it (here after
    150000 of 400000 bytes, as the test server closes every connection) is a cut, resumed."""
    ca, cert, key = make_test_ca(tmp_path)
    tls_server = FaultServer(tls=(str(cert), str(key)))
    try:
        data = payload(400_000, seed=15)
        url = add_file(tls_server, "cut.pt", data, content_length=False, drop_after=150_000, drop_times=1)
        code = CHILD_PRELUDE + "print(download(sys.argv[1], root=sys.argv[2], progress=False))\n"
        env = {
            **os.environ,
            "PYTHONPATH": PYTHON_DIR,
            "SSL_CERT_FILE": str(ca),
            "SSL_CERT_DIR": str(tmp_path / "none"),
        }
        done = subprocess.run(
            [sys.executable, "-c", code, url, str(tmp_path / "a")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.strip() == str(tmp_path / "a" / "cut.pt"), done.stdout + done.stderr
        assert (tmp_path / "a" / "cut.pt").read_bytes() == data
        assert tls_server.stats(path_of(url)).ranges == [None, "bytes=150000-"]
    finally:
        tls_server.stop()


# --- concurrency and Ctrl-C -----------------------------------------------------------------


def test_four_processes_download_once(server: FaultServer, tmp_path: Path) -> None:
    data = payload(2_000_000, seed=9)
    url = add_file(server, "shared.pt", data, throttle_seconds=1.5)
    code = CHILD_PRELUDE + (
        "import time\n"
        "start = time.time()\n"
        "path = download(sys.argv[1], root=sys.argv[2], progress=False)\n"
        "print(start, time.time(), path)\n"
    )
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert [out[2] for out in outs] == [str(tmp_path / "shared.pt")] * 4
    # They really ran at the same time: every one started before the first one finished.
    assert max(float(out[0]) for out in outs) < min(float(out[1]) for out in outs)
    assert (tmp_path / "shared.pt").read_bytes() == data
    stats = server.stats(path_of(url))
    assert stats.requests == 1
    assert stats.body_bytes == len(data)


def test_ctrl_c_stops_a_stalled_download_promptly(server: FaultServer, tmp_path: Path) -> None:
    """The server stalls far longer than any tick; Ctrl-C must still stop the download at once."""
    data = payload(200_000)
    url = add_file(server, "stall.pt", data, drip_after=1000, drip_seconds=20.0, drip_times=1)
    # A process started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: give the child the one a terminal gives.
    code = CHILD_PRELUDE + (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def progress(done, total):\n"
        "    if done and not getattr(progress, 'said', False):\n"
        "        progress.said = True\n"
        "        print('started', flush=True)\n"
        "try:\n"
        "    download(sys.argv[1], root=sys.argv[2], progress=progress)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', time.time(), flush=True)\n"
        "    sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR, "CLIPFAST_READ_TIMEOUT": "30"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, url, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.3)
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    word, when = out.split()
    assert word == "interrupted"
    assert float(when) - sent < 1.0  # the stall lasts 20 s and the read timeout is 30 s
    assert not (tmp_path / "stall.pt").exists()
