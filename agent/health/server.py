"""The health endpoints: a pure WSGI app over the cached verdict, and a small server starter."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import structlog
import waitress.server

from agent.errors import ConfigError
from agent.health.metrics import make_registry, render
from agent.health.monitor import VerdictCache

log = structlog.get_logger(__name__)

StartResponse = Callable[..., Any]
MAX_HEADER_BYTES = 16 * 1024
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


# The server: waitress. Its one I/O thread reads and parses every connection without
# blocking (poll, not select: no 1024-descriptor ceiling) and hands only complete requests
# to a small thread pool, so idle and slowloris clients cost a socket and a buffer, never
# a thread. A hand-written selector loop would have to re-implement its HTTP/1.1 parsing,
# pipelining, per-connection timeouts and header limits; waitress is pure Python, has no
# dependencies, and is maintained by the Pylons project.
THREADS = 4  # the app answers from memory in microseconds; 4 covers /metrics under load
CONNECTION_LIMIT = 1000  # above this waitress stops accepting: far above honest clients
CHANNEL_TIMEOUT = 10  # seconds a silent connection is kept (a trickling one costs a buffer)
CLEANUP_INTERVAL = 2  # seconds between sweeps for idle connections


class HealthServer:
    """The app served by waitress on a background thread; `close()` stops it promptly."""

    def __init__(self, app: HealthApp, host: str, port: int) -> None:
        for name in ("waitress", "waitress.queue"):  # its depth warnings are our bench's job
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            # One host and port give a single-socket server; types-waitress does not declare
            # its effective_port/_map/trigger, so it is Any here.
            self.server: Any = waitress.server.create_server(
                app, host=host, port=port, threads=THREADS, connection_limit=CONNECTION_LIMIT,
                channel_timeout=CHANNEL_TIMEOUT, cleanup_interval=CLEANUP_INTERVAL,
                max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=1024,
                asyncore_use_poll=True, asyncore_loop_timeout=1, ident="grid-agent",
                expose_tracebacks=False, clear_untrusted_proxy_headers=True,
                ipv6=":" in host, ipv4=":" not in host)
        except (OSError, ValueError) as exc:  # in use, not this host's address, no IPv6
            why = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"cannot listen on {host}:{port} (GRID_AGENT_LISTEN): {why}",
                              remedy="choose a free port and an address of this pod, "
                                     "or set GRID_AGENT_LISTEN=off") from None
        self.thread = threading.Thread(target=self.server.run, name="grid-agent-http",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    @property
    def host(self) -> str:
        return str(self.server.effective_host)

    def start(self) -> HealthServer:
        self.thread.start()
        log.info("http_listening", host=self.host, port=self.port)
        return self

    def close(self) -> None:
        """Close every connection from the I/O thread itself; its loop ends with an empty map."""
        server = self.server

        def close_all() -> None:
            for channel in list(server._map.values()):
                channel.close()

        server.task_dispatcher.shutdown(timeout=2)  # first: a running task writes via the loop
        if self.thread.is_alive():
            server.trigger.pull_trigger(close_all)
            self.thread.join(timeout=5)
        else:
            close_all()
