"""Hostile clients for the health server: idle and slowloris connections, and probe timing.

Shared by tests/host/test_probe_starvation.py and `scripts/bench probes`. Every socket is
on 127.0.0.1; the trickle thread stops when the context ends.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def hostile(port: int, *, idle: int = 200, slowloris: int = 16,
            trickle_every: float = 0.5) -> Iterator[list[socket.socket]]:
    """`idle` connections that never send a byte, `slowloris` ones that send a request
    header one byte at a time and never finish it; all held open until the block ends."""
    held: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(idle):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        slow = [socket.create_connection(("127.0.0.1", port), timeout=5)
                for _ in range(slowloris)]
        held += slow
        for conn in slow:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")

        def trickle() -> None:
            while not stop.wait(trickle_every):
                for conn in slow:
                    with contextlib.suppress(OSError):
                        conn.sendall(b"X")  # an endless header line

        thread = threading.Thread(target=trickle, name="slowloris", daemon=True)
        thread.start()
        yield held
    finally:
        stop.set()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()


def still_open(held: list[socket.socket]) -> int:
    """How many of the held connections the server has not closed yet."""
    count = 0
    for conn in held:
        try:
            conn.setblocking(False)
            data = conn.recv(1, socket.MSG_PEEK)
            count += data != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.setblocking(True)
    return count


def probe_once(port: int, path: str, *, timeout: float) -> tuple[float, int | None]:
    """(milliseconds, status or None on error), a new connection each, as kubelet does."""
    started = time.perf_counter()
    status = None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        status = resp.status
        conn.close()
    except OSError:
        status = None
    return (time.perf_counter() - started) * 1000, status


def measure(port: int, path: str, *, count: int, rate: float = 20.0,
            timeout: float = 10.0) -> dict[str, float]:
    """`count` probes of `path` at `rate` per second: p50/p99/max in ms and the failures."""
    lat, failed, started = [], 0, time.monotonic()
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ms, status = probe_once(port, path, timeout=timeout)
        lat.append(ms)
        failed += status is None
    lat.sort()
    return {"count": count, "failed": failed, "p50": lat[len(lat) // 2],
            "p99": lat[max(0, int(len(lat) * 0.99) - 1)], "max": lat[-1]}
