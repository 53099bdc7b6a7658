"""A small HTTP server on 127.0.0.1 for the download tests: Range requests, If-Range, and faults.

Each served path has a ``Resource`` (its bytes and the faults to inject, each for a given number of
requests); the server counts the requests and body bytes it sends per path, so tests can assert
that a resume asked only for the missing bytes. Everything is bounded: a drip stops after its
delay, and ``stop()`` ends the server and its handler threads.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import select
import socket
import socketserver
import ssl
import struct
import termios
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["ConnectProxy", "FaultServer", "Resource", "Served"]


@dataclass
class Resource:
    """One path's content and its faults. A fault with a count applies to that many requests."""

    data: bytes
    etag: Optional[str] = None  # default: a strong tag from the content
    last_modified: Optional[str] = "Tue, 01 Jan 2030 00:00:00 GMT"
    support_range: bool = True
    honour_if_range: bool = True  # False: serve a Range even when If-Range no longer matches
    content_length: bool = True  # False: close-delimited body, no Content-Length
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length (a drop omits the last chunk)
    reset: bool = False  # end each body's connection with a reset (RST), not a clean close
    statuses: list[int] = field(default_factory=list)  # answer these first, one per request
    drop_after: Optional[int] = None  # send only this many body bytes, then close
    drop_times: int = 0
    corrupt: bool = False  # flip bytes in the middle of the body
    drip_after: Optional[int] = None  # after this many body bytes, stall for drip_seconds
    drip_seconds: float = 0.0
    drip_times: int = 0
    redirect_to: Optional[str] = None  # answer 302 with this Location
    throttle_seconds: float = 0.0  # spread the body over about this long
    fake_length: Optional[int] = None  # announce this Content-Length instead (then close)
    retry_after: Optional[str] = None  # a Retry-After header on the `statuses` answers
    extra_body: bytes = b""  # sent after the announced body (a body longer than Content-Length)
    loris_interval: float = 0.0  # send the body one byte at a time, this many seconds apart

    def tag(self) -> str:
        return self.etag if self.etag is not None else '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass
class Served:
    """What happened at one path."""

    requests: int = 0
    body_bytes: int = 0
    ranges: list[Optional[str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


class FaultServer:
    """``tls=(cert_pem, key_pem)`` serves HTTPS instead of HTTP; ``port`` 0 takes a free one."""

    def __init__(self, tls: Optional[tuple[str, str]] = None, port: int = 0) -> None:
        self.resources: dict[str, Resource] = {}
        self.served: dict[str, Served] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake happens in the handler thread (first read), not in the accept loop.
            self.httpd.socket = context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def add(self, path: str, resource: Resource) -> str:
        with self.lock:
            self.resources[path] = resource
            self.served.setdefault(path, Served())
        return self.url(path)

    def stats(self, path: str) -> Served:
        with self.lock:
            return self.served.setdefault(path, Served())

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    # -- request handling ------------------------------------------------------------------

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            res = self.resources.get(path)
            served = self.served.setdefault(path, Served())
            served.requests += 1
            served.ranges.append(h.headers.get("Range"))
            status_now = res.statuses.pop(0) if res is not None and res.statuses else None
            drop = drip = False
            if res is not None and res.drop_after is not None and res.drop_times > 0:
                res.drop_times -= 1
                drop = True
            if res is not None and res.drip_after is not None and res.drip_times > 0:
                res.drip_times -= 1
                drip = True
        if res is None:
            self._simple(h, served, 404)
            return
        if status_now is not None:
            self._simple(h, served, status_now, res.retry_after)
            return
        if res.redirect_to is not None:
            self._record(served, 302)
            h.send_response(302)
            h.send_header("Location", res.redirect_to)
            h.send_header("Content-Length", "0")
            h.send_header("Connection", "close")
            h.end_headers()
            return
        data = res.data
        if res.corrupt and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        start = 0
        status = 200
        wanted = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        validator_ok = if_range is None or if_range in (res.tag(), res.last_modified)
        if wanted and res.support_range and (validator_ok or not res.honour_if_range):
            spec = wanted.strip().removeprefix("bytes=")
            first = spec.split("-", 1)[0]
            if first.isdigit():
                start = int(first)
                if start >= len(data):
                    self._record(served, 416)
                    h.send_response(416)
                    h.send_header("Content-Range", f"bytes */{len(data)}")
                    h.send_header("Content-Length", "0")
                    h.send_header("Connection", "close")
                    h.end_headers()
                    return
                status = 206
        body = data[start:]
        self._record(served, status)
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("ETag", res.tag())
        if res.last_modified:
            h.send_header("Last-Modified", res.last_modified)
        if res.support_range:
            h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if res.fake_length is not None:
            h.send_header("Content-Length", str(res.fake_length))
        elif res.chunked:
            h.send_header("Transfer-Encoding", "chunked")
        elif res.content_length:
            h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        if res.fake_length is not None:
            return
        limit = len(body)
        if drop and res.drop_after is not None:
            limit = max(0, res.drop_after - start)
        whole = self._send_body(h, served, body[:limit], res, start, drip) and limit == len(body)
        if res.chunked and whole:
            self._write(h, b"0\r\n\r\n")
        if res.extra_body and limit == len(body):
            try:
                h.wfile.write(res.extra_body)
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
        if limit < len(body):
            h.close_connection = True
        if res.reset:
            self._reset(h)

    def _send_body(
        self,
        h: http.server.BaseHTTPRequestHandler,
        served: Served,
        body: bytes,
        res: Resource,
        offset: int,
        drip: bool,
    ) -> bool:
        """Sends ``body`` (framed as chunks for a chunked resource); False where it stopped early."""
        piece = 1 if res.loris_interval else 64 * 1024
        pieces = max(1, (len(body) + piece - 1) // piece)
        pause = res.throttle_seconds / pieces if res.throttle_seconds else 0.0
        if res.loris_interval:
            pause = res.loris_interval
        sent = 0
        try:
            while sent < len(body):
                if drip and res.drip_after is not None and offset + sent >= res.drip_after:
                    # Stall (bounded), then drop the connection.
                    self.stopping.wait(res.drip_seconds)
                    return False
                end = min(len(body), sent + piece)
                if drip and res.drip_after is not None:
                    end = min(end, max(sent + 1, res.drip_after - offset))
                framed = body[sent:end]
                if res.chunked:
                    framed = b"%x\r\n" % len(framed) + framed + b"\r\n"
                h.wfile.write(framed)
                with self.lock:
                    served.body_bytes += end - sent
                sent = end
                if pause and self.stopping.wait(pause):
                    return False
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    @staticmethod
    def _write(h: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        try:
            h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _reset(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """Close the connection with a reset, once the client's side has every byte sent (a reset
        drops whatever is still unsent): the client reads them all, then finds the reset."""
        sock = h.connection
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            if not unsent:
                break
            self.stopping.wait(0.002)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.rfile.close()  # the socket closes for real once its file objects are closed
        sock.close()

    def _record(self, served: Served, status: int) -> None:
        with self.lock:
            served.statuses.append(status)

    def _simple(
        self,
        h: http.server.BaseHTTPRequestHandler,
        served: Served,
        status: int,
        retry_after: Optional[str] = None,
    ) -> None:
        self._record(served, status)
        body = f"status {status}\n".encode()
        h.send_response(status)
        if retry_after is not None:
            h.send_header("Retry-After", retry_after)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that tunnels only to 127.0.0.1 and records each tunnel."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.refused: list[str] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            piece = client.recv(4096)
            if not piece:
                return
            head += piece
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) < 2 or parts[0] != "CONNECT" or not parts[1].startswith("127.0.0.1:"):
            self.refused.append(line)
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self.tunnels.append(parts[1])
        upstream = socket.create_connection(("127.0.0.1", int(parts[1].split(":", 1)[1])), timeout=10)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        try:
            sockets = [client, upstream]
            while True:  # ends when either side closes or after 10 s of silence
                ready, _, _ = select.select(sockets, [], [], 10)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()
