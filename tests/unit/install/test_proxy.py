"""HTTPS_PROXY with a real CONNECT tunnel: the TLS download goes through the proxy, and
NO_PROXY sends it around (requests' trust_env; agent/install/download.py new_session)."""

import contextlib
import select
import socket
import socketserver
import threading

import pytest

from agent.catalog import Release
from agent.host.root import HostRoot
from agent.install.download import DownloadOptions, ensure_installer, new_session
from tests.simnode.httpd import CA_FILE
from tests.unit.install.test_download import NAME, PATH, PAYLOAD, SHA


class _Tunnel(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        self.server.seen.append(line)
        method, target, _ = line.split(" ", 2)
        if method != "CONNECT":
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            pair = [self.request, upstream]
            while True:
                ready, _, _ = select.select(pair, [], [], 5)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.request else self.request).sendall(data)


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.seen: list[str] = []


@pytest.fixture
def proxy():
    server = _Proxy()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(CA_FILE))
    for name in ("CURL_CA_BUNDLE", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def fetch(https_server, tmp_path):
    https_server.add(PATH, PAYLOAD)
    release = Release("v1", https_server.url(PATH), SHA, None, "auto")
    with contextlib.closing(new_session()) as session:
        return ensure_installer(release, HostRoot(tmp_path), session=session,
                                options=DownloadOptions(read_timeout=5.0),
                                progress=lambda done, total: None)


def test_https_goes_through_the_https_proxy_tunnel(https_server, proxy, env, tmp_path):
    env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    path = fetch(https_server, tmp_path)
    assert path.name == NAME and path.read_bytes() == PAYLOAD
    port = https_server.server_address[1]
    assert [line.rsplit(" ", 1)[0] for line in proxy.seen] == [f"CONNECT 127.0.0.1:{port}"]


def test_no_proxy_goes_around_it(https_server, proxy, env, tmp_path):
    env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    env.setenv("NO_PROXY", "127.0.0.1")
    assert fetch(https_server, tmp_path).read_bytes() == PAYLOAD
    assert proxy.seen == []
