"""Every way the fault server can misbehave, plus slow-loris, a body longer than its
Content-Length, a redirect loop and a redirect to a file: URL: each download ends, in bounded time,
with the verified file or a typed error (DownloadError, ChecksumError), never a partial or
unverified file at the final path and never a lock left held.

Also the documented behaviour test_download.py does not show: a resumed file that fails the hash is
fetched once more from the start; a server without Range support; 408 and 429 with Retry-After."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clipfast
import pytest
from clipfast import _native
from clipfast.errors import ChecksumError, DownloadError
from conftest import local_network
from http_fault_server import FaultServer, Resource

DATA = hashlib.shake_256(b"faults").digest(300_000)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local_network(monkeypatch, tmp_path, read_timeout="1")


@dataclass
class Fault:
    """A misbehaving server and what clipfast must make of it."""

    faults: dict[str, Any] = field(default_factory=dict)
    outcome: type[Exception] | None = None  # None: the verified file
    data: bytes = DATA
    seconds: float = 20.0  # the download (with its retries) ends within this


FAULTS: dict[str, Fault] = {
    "plain": Fault(),
    "404": Fault({"statuses": [404]}, DownloadError),
    "403": Fault({"statuses": [403]}, DownloadError),
    "410": Fault({"statuses": [410]}, DownloadError),
    "401": Fault({"statuses": [401]}, DownloadError),
    "500 then ok": Fault({"statuses": [500]}),
    "502 and 503 then ok": Fault({"statuses": [502, 503]}),
    "503 always": Fault({"statuses": [503] * 10}, DownloadError),
    "408 with Retry-After": Fault({"statuses": [408], "retry_after": "1"}),
    "429 with Retry-After": Fault({"statuses": [429], "retry_after": "1"}),
    "429 with a Retry-After of a day": Fault({"statuses": [429], "retry_after": "86400"}),
    "429 with a Retry-After date": Fault({"statuses": [429], "retry_after": "Wed, 21 Oct 2099 07:28:00 GMT"}),
    "dropped connection": Fault({"drop_after": 100_000, "drop_times": 2}),
    "dropped, no Range support": Fault({"drop_after": 100_000, "drop_times": 1, "support_range": False}),
    "dropped every time": Fault({"drop_after": 100_000, "drop_times": 10}, DownloadError),
    "corrupt body": Fault({"corrupt": True}, ChecksumError),
    "stall past the read timeout": Fault({"drip_after": 50_000, "drip_seconds": 3.0, "drip_times": 1}),
    "slow-loris": Fault({"loris_interval": 0.4}, DownloadError),
    "no Content-Length": Fault({"content_length": False}),
    "Content-Length longer than the body": Fault({"fake_length": len(DATA) + 10}, DownloadError),
    "body longer than Content-Length": Fault({"extra_body": b"trailing bytes past the length" * 100}),
    "body cut by a short Content-Length": Fault(
        {"extra_body": DATA[-1000:]}, ChecksumError, data=DATA[:-1000]
    ),
    "If-Range ignored after a change": Fault(
        {"drop_after": 100_000, "drop_times": 1, "honour_if_range": False}
    ),
    "throttled": Fault({"throttle_seconds": 1.5}),
    "redirect loop": Fault({"redirect_to": "SELF"}, DownloadError),
    "redirect to file:": Fault({"redirect_to": "file:///etc/passwd"}, DownloadError),
    "redirect to another scheme": Fault({"redirect_to": "ftp://127.0.0.1/x.pt"}, DownloadError),
    "redirect to a malformed URL": Fault({"redirect_to": "http://[::1"}, DownloadError),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_every_fault_ends_with_the_file_or_a_typed_error(
    name: str, server: FaultServer, tmp_path: Path
) -> None:
    fault = FAULTS[name]
    served = fault.data
    sha = hashlib.sha256(DATA).hexdigest()
    path = f"/clip/models/{sha}/model.pt"
    faults = dict(fault.faults)
    if faults.get("redirect_to") == "SELF":
        faults["redirect_to"] = path
    url = server.add(path, Resource(data=served, **faults))
    root = tmp_path / "root"
    start = time.monotonic()
    if fault.outcome is None:
        got = clipfast.download(url, root=str(root), progress=False)
        assert Path(got).read_bytes() == DATA
    else:
        with pytest.raises(fault.outcome) as raised:
            clipfast.download(url, root=str(root), progress=False)
        assert url.split("/")[-1] in str(raised.value) or str(root) in str(raised.value), raised.value
        assert not (root / "model.pt").exists(), "an unverified file at the final path"
    assert time.monotonic() - start < fault.seconds
    # Nothing else was written, and the lock is free.
    assert {p.name for p in root.iterdir()} <= {
        "model.pt",
        "model.pt.lock",
        "model.pt.verified",
        "model.pt.part",
        "model.pt.part.meta",
    }
    lock = _native.FileLock(str(root / "model.pt.lock"))
    assert lock.acquire(timeout=0.5)
    lock.release()
    if name == "redirect to file:":
        assert server.stats(path).requests == 1  # not retried


def test_retry_after_is_honoured_end_to_end(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """408 and 429 wait what Retry-After says (1 s), not the backoff (20 s here)."""
    monkeypatch.setenv("CLIPFAST_BACKOFF", "20")
    sha = hashlib.sha256(DATA).hexdigest()
    url = server.add(f"/clip/models/{sha}/m.pt", Resource(data=DATA, statuses=[429, 408], retry_after="1"))
    start = time.monotonic()
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    elapsed = time.monotonic() - start
    assert Path(path).read_bytes() == DATA
    assert server.stats(f"/clip/models/{sha}/m.pt").statuses == [429, 408, 200]
    assert 1.8 <= elapsed < 10, elapsed


def test_a_resumed_file_that_fails_the_hash_is_fetched_once_more_from_the_start(
    server: FaultServer, tmp_path: Path
) -> None:
    """The kept bytes of an earlier try may be what is wrong: after a resumed download fails the
    hash, one fresh download from byte 0 (which here succeeds)."""
    sha = hashlib.sha256(DATA).hexdigest()
    route = f"/clip/models/{sha}/m.pt"
    url = server.add(route, Resource(data=DATA))
    # A partial file from an earlier try, with a valid record, whose bytes are wrong.
    root = tmp_path
    good = Resource(data=DATA)
    (root / "m.pt.part").write_bytes(b"\x00" * 100_000)
    meta = f"clipfast-partial 1\nurl {url}\ntotal {len(DATA)}\netag {good.tag()}\n"
    (root / "m.pt.part.meta").write_text(meta)
    path = clipfast.download(url, root=str(root), progress=False)
    assert Path(path).read_bytes() == DATA
    stats = server.stats(route)
    assert stats.ranges == ["bytes=100000-", None], stats.ranges  # resumed, then from the start
    assert stats.statuses == [206, 200]


def test_a_resumed_file_that_fails_twice_is_a_checksum_error(server: FaultServer, tmp_path: Path) -> None:
    sha = hashlib.sha256(DATA).hexdigest()
    route = f"/clip/models/{sha}/m.pt"
    url = server.add(route, Resource(data=DATA, corrupt=True))
    (tmp_path / "m.pt.part").write_bytes(DATA[:100_000])
    tag = Resource(data=DATA).tag()
    (tmp_path / "m.pt.part.meta").write_text(
        f"clipfast-partial 1\nurl {url}\ntotal {len(DATA)}\netag {tag}\n"
    )
    with pytest.raises(ChecksumError):
        clipfast.download(url, root=str(tmp_path), progress=False)
    assert server.stats(route).ranges == ["bytes=100000-", None]
    assert not (tmp_path / "m.pt").exists()


def test_a_server_without_range_support_restarts_from_the_start(server: FaultServer, tmp_path: Path) -> None:
    """It answers a Range request with the whole file (200): the partial bytes are dropped, the
    body taken from byte 0, and nothing is spliced."""
    sha = hashlib.sha256(DATA).hexdigest()
    route = f"/clip/models/{sha}/m.pt"
    url = server.add(route, Resource(data=DATA, support_range=False, drop_after=120_000, drop_times=1))
    path = clipfast.download(url, root=str(tmp_path), progress=False)
    assert Path(path).read_bytes() == DATA
    stats = server.stats(route)
    assert stats.statuses == [200, 200] and stats.ranges[1] == "bytes=120000-"
    assert stats.body_bytes == 120_000 + len(DATA)
