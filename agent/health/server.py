"""The health endpoints: a pure WSGI app over the cached verdict, and a small server starter."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog

from agent.health.metrics import make_registry, render
from agent.health.monitor import VerdictCache

log = structlog.get_logger(__name__)

StartResponse = Callable[..., Any]
MAX_HEADER_BYTES = 16 * 1024
REQUEST_TIMEOUT = 2.0  # seconds a client may take to send its request (kubelet: at once)
# The classic text format every Prometheus version scrapes (client 0.26 defaults to 1.0.0,
# which Prometheus 2.x does not know); our metric names are all legacy-valid.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthApp:
    """GET /livez /readyz /status /metrics, answered from the cache; no request body is read."""

    def __init__(self, cache: VerdictCache, *, stale_after: float) -> None:
        self.cache, self.stale_after = cache, stale_after
        self.registry = make_registry(cache, stale_after=stale_after)
        self.routes: dict[str, Callable[[], tuple[str, str, bytes]]] = {
            "/livez": self.livez, "/readyz": self.readyz, "/status": self.status,
            "/metrics": self.metrics,
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        route = self.routes.get(environ.get("PATH_INFO") or "/")
        if route is None:
            return _send(start_response, "404 Not Found", "text/plain", b"not found\n")
        if environ.get("REQUEST_METHOD") != "GET":
            return _send(start_response, "405 Method Not Allowed", "text/plain",
                         b"GET only\n", [("Allow", "GET")])
        status, ctype, body = route()
        return _send(start_response, status, ctype, body)

    def _alive(self) -> tuple[bool, float]:
        _, heartbeat, *_ = self.cache.snapshot()
        age = self.cache.age(heartbeat)
        return age <= self.stale_after, age

    def livez(self) -> tuple[str, str, bytes]:
        alive, age = self._alive()
        if alive:
            return "200 OK", "text/plain", b"ok\n"
        text = f"watch loop stuck: no verdict for {age:.0f}s (limit {self.stale_after:.0f}s)\n"
        return "503 Service Unavailable", "text/plain", text.encode()

    def readyz(self) -> tuple[str, str, bytes]:
        verdict = self.cache.snapshot()[0]
        if verdict is None:
            return "503 Service Unavailable", "text/plain", b"no verdict yet\n"
        if verdict.ready:
            return "200 OK", "text/plain", f"{verdict.state}\n".encode()
        return "503 Service Unavailable", "text/plain", f"{verdict.reason()}\n".encode()

    def status(self) -> tuple[str, str, bytes]:
        verdict, _, cycles, timeouts, heals = self.cache.snapshot()
        alive, age = self._alive()
        body: dict[str, Any] = {"alive": alive, "heartbeat_age_seconds": round(age, 3),
                                "cycles": cycles, "timeouts": timeouts, "self_heal": heals,
                                "verdict": verdict.to_dict() if verdict else None}
        return "200 OK", "application/json", (json.dumps(body, indent=2) + "\n").encode()

    def metrics(self) -> tuple[str, str, bytes]:
        return "200 OK", METRICS_CONTENT_TYPE, render(self.registry)


def _send(start_response: StartResponse, status: str, ctype: str, body: bytes,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), *(extra or [])]
    start_response(status, headers)
    return [body]


class _HeaderTooLarge(Exception):
    pass


class _BoundedReader:
    """Wraps the request stream: the request line and headers together stay under a limit."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.left = raw, limit

    def readline(self, size: int = -1) -> bytes:
        line = self.raw.readline(min(size, self.left + 1) if size >= 0 else self.left + 1)
        self.left -= len(line)
        if self.left < 0:
            raise _HeaderTooLarge
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT  # a slow or silent client is dropped, never blocks others

    def handle(self) -> None:
        self.rfile = _BoundedReader(self.rfile, MAX_HEADER_BYTES)  # type: ignore[assignment]
        try:
            super().handle()
        except _HeaderTooLarge:
            self.requestline, self.request_version = "", "HTTP/1.0"
            self.send_error(431, "Request Header Fields Too Large")
        except TimeoutError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http_request", client=self.client_address[0], line=format % args)


class _Server(WSGIServer):
    """A fixed pool of handler threads: no thread start per probe, bounded concurrency."""

    allow_reuse_address = True
    pool_size = 8

    def server_activate(self) -> None:
        super().server_activate()
        self.jobs: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self.workers = [threading.Thread(target=self._work, name=f"grid-agent-http-{i}",
                                         daemon=True) for i in range(self.pool_size)]
        for worker in self.workers:
            worker.start()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            request, address = job
            try:
                self.finish_request(request, address)
            except Exception:
                self.handle_error(request, address)
            finally:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("http_request_failed", client=str(client_address[0]), exc_info=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.jobs.put((request, client_address))

    def server_close(self) -> None:
        super().server_close()
        for _ in self.workers:
            self.jobs.put(None)


class HealthServer:
    """The app served on a background thread; `close()` stops it within a fraction of a second."""

    def __init__(self, app: HealthApp, host: str, port: int) -> None:
        self.httpd = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.2}, name="grid-agent-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> HealthServer:
        self.thread.start()
        log.info("http_listening", host=self.httpd.server_address[0], port=self.port)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=2)
