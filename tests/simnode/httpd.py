"""A 127.0.0.1 HTTP(S) server that serves files and injects the faults downloads meet.

Each path serves bytes; `plan(path, *replies)` queues one-shot behaviours that the next
requests for that path consume in order (drop after N bytes, a status with Retry-After,
a stall, a slow drip, a redirect); standing flags (`ignore_range`, `corrupt`,
`no_length`, `endless`) apply to every request. The server counts requests and body bytes sent.
Also a pytest plugin (fixtures `http_server`, `https_server`) and a CLI for benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import socket
import ssl
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CERTS = Path(__file__).parent / "certs"
CA_FILE = CERTS / "ca.crt"  # a throwaway test CA (its key was deleted); 127.0.0.1 only
_CHUNK = 1 << 20
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Reply:
    """One injected behaviour for one request."""

    kind: str  # drop | status | stall | drip | redirect
    after: int = 0  # drop: body bytes sent before the connection is cut
    code: int = 200
    retry_after: str | None = None
    seconds: float = 0.0  # stall: wait before the body; drip: pause between pieces
    piece: int = 1024  # drip: bytes per piece
    location: str = ""

    @classmethod
    def drop(cls, after: int) -> Reply:
        return cls("drop", after=after)

    @classmethod
    def status(cls, code: int, retry_after: str | None = None) -> Reply:
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def stall(cls, seconds: float) -> Reply:
        return cls("stall", seconds=seconds)

    @classmethod
    def drip(cls, piece: int, seconds: float) -> Reply:
        return cls("drip", piece=piece, seconds=seconds)

    @classmethod
    def redirect(cls, location: str, code: int = 302) -> Reply:
        return cls("redirect", code=code, location=location)


@dataclass
class Served:
    data: bytes
    ignore_range: bool = False
    corrupt: bool = False  # one byte in the middle flipped on the wire
    no_length: bool = False  # no Content-Length: the body ends when the connection closes
    endless: bool = False  # no Content-Length and the data repeated until the client leaves
    plan: deque[Reply] = field(default_factory=deque)


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    absolute: bool  # absolute-form target: the client spoke to us as a proxy
    host: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        target = urlsplit(self.path)
        seen = Seen(self.command, target.path, self.headers.get("Range"),
                    bool(target.scheme), self.headers.get("Host"))
        served, reply = self.server.take(seen)
        if served is None:
            self._status(404)
        elif reply is not None and reply.kind in ("status", "redirect"):
            self._status(reply.code, reply.retry_after, reply.location)
        else:
            self._body(served, reply, body=body)

    def _status(self, code: int, retry_after: str | None = None, location: str = "") -> None:
        self.send_response(code)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _span(self, served: Served) -> tuple[int, int, bool]:
        size = len(served.data)
        found = _RANGE.match(self.headers.get("Range") or "")
        if served.ignore_range or not found:
            return 0, size, False
        start = int(found.group(1))
        end = min(int(found.group(2)) + 1, size) if found.group(2) else size
        return start, end, True

    def _body(self, served: Served, reply: Reply | None, *, body: bool) -> None:
        size = len(served.data)
        start, end, partial = self._span(served)
        if partial and start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if partial else 200)
        self.send_header("Accept-Ranges", "none" if served.ignore_range else "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if served.no_length or served.endless:
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if body and served.endless:
            self._endless(served)
        elif body:
            self._send(served, start, end, reply)

    def _send(self, served: Served, start: int, end: int, reply: Reply | None) -> None:
        view = memoryview(served.data)
        flip = len(served.data) // 2 if served.corrupt else -1
        stop = end if reply is None or reply.kind != "drop" else min(end, start + reply.after)
        if reply is not None and reply.kind == "stall":
            self.server.stopping.wait(reply.seconds)
        drip = reply is not None and reply.kind == "drip"
        step = reply.piece if drip else _CHUNK
        pos = start
        while pos < stop and not self.server.stopping.is_set():
            chunk = view[pos:min(pos + step, stop)]
            if pos <= flip < pos + len(chunk):
                chunk = bytearray(chunk)
                chunk[flip - pos] ^= 0xFF
            try:
                self.connection.sendall(chunk)
            except OSError:
                break
            self.server.add_sent(len(chunk))
            pos += len(chunk)
            if drip:
                self.server.stopping.wait(reply.seconds)
        if pos < end or served.no_length:
            self._cut()

    def _endless(self, served: Served) -> None:
        while not self.server.stopping.is_set():
            try:
                self.connection.sendall(served.data)
            except OSError:
                break
            self.server.add_sent(len(served.data))
        self._cut()

    def _cut(self) -> None:
        # An orderly FIN: what was sent is delivered, then the body ends short.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FaultServer(ThreadingHTTPServer):
    """The server; `url(path)` is where a client finds a served path."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *, tls: bool = False, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.tls = tls
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(CERTS / "loopback.crt", CERTS / "loopback.key")
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.files: dict[str, Served] = {}
        self.requests: list[Seen] = []
        self.bytes_sent = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, data: bytes, **flags: bool) -> Served:
        served = Served(data, **flags)
        self.files[path] = served
        return served

    def plan(self, path: str, *replies: Reply) -> None:
        self.files[path].plan.extend(replies)

    def take(self, seen: Seen) -> tuple[Served | None, Reply | None]:
        with self._lock:
            self.requests.append(seen)
            served = self.files.get(seen.path)
            if served is None or not served.plan:
                return served, None
            return served, served.plan.popleft()

    def add_sent(self, count: int) -> None:
        with self._lock:
            self.bytes_sent += count

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r.path == path)

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent = 0

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self.serve_forever, name="fault-httpd",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@pytest.fixture
def http_server():
    """A plain-HTTP fault server on 127.0.0.1 (clients must allow an HTTP mirror)."""
    server = FaultServer().start()
    yield server
    server.stop()


@pytest.fixture
def https_server():
    """The same over TLS with a self-signed 127.0.0.1 certificate (CA_FILE)."""
    server = FaultServer(tls=True).start()
    yield server
    server.stop()


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Serve /file.run of --size random bytes; print the URL and counters on demand."""
    parser = argparse.ArgumentParser(prog="python3 -m tests.simnode.httpd")
    parser.add_argument("--size", type=_size, default=_size("256M"))
    parser.add_argument("--drops", type=int, default=0, help="cut the first N responses")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args(argv)
    data = random_bytes(args.size)
    server = FaultServer(tls=args.tls)
    server.add("/file.run", data)
    gap = max(1, args.size // (args.drops + 1))
    server.plan("/file.run", *(Reply.drop(gap) for _ in range(args.drops)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.start()
    print(server.url("/file.run"), flush=True)
    # Each line on stdin asks for the counters (and re-arms the drops for the next run).
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(f"{server.count()} {server.bytes_sent}", flush=True)
        server.reset_counters()
        served = server.files["/file.run"]
        served.plan.clear()
        served.plan.extend(Reply.drop(gap) for _ in range(args.drops))
    server.stop()
    return 0


def random_bytes(size: int) -> bytes:
    """Incompressible bytes, fast: a random block repeated would hash the same, so no."""
    import random

    rng = random.Random(4)  # noqa: S311 - test data, not a secret
    block = 1 << 20
    return b"".join(rng.randbytes(min(block, size - at)) for at in range(0, size, block))


if __name__ == "__main__":
    sys.exit(main())
