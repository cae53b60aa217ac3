"""The WSGI app without a socket, its metrics parsed back, and one real server on port 0."""

import json
import socket
import urllib.request
from io import BytesIO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.health.monitor import VerdictCache
from agent.health.server import MAX_HEADER_BYTES, HealthApp, HealthServer
from agent.health.verdict import FAIL, OK, WARN, CheckResult, make_verdict
from tests.fakes.clock import FakeClock
from tests.fakes.pci_config import config_space
from tests.fakes.watch import FakeHost, health, healthy_node

STALE = 100.0


def call(app, path, method="GET"):
    """Run the app like a WSGI server would; the body stream explodes if anyone reads it."""
    seen = {}

    class NoBody(BytesIO):
        def read(self, *a):
            raise AssertionError("the request body must not be read")

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": NoBody(b"x" * 10)}
    body = b"".join(app(environ, start_response))
    assert int(seen["headers"]["Content-Length"]) == len(body)
    return int(seen["status"].split()[0]), seen["headers"], body.decode()


def verdict(*statuses, applicable=True):
    checks = tuple(CheckResult(f"c{i}", s, f"reason {i}") for i, s in enumerate(statuses))
    return make_verdict(checks, started=1_700_000_000.0, duration=0.25, applicable=applicable)


@pytest.fixture
def app():
    return HealthApp(VerdictCache(FakeClock()), stale_after=STALE)


def test_no_verdict_yet(app):
    assert call(app, "/readyz")[:1] == (503,)
    assert call(app, "/readyz")[2] == "no verdict yet\n"
    assert call(app, "/livez")[0] == 200


def test_ready_healthy_degraded_unhealthy_not_applicable(app):
    app.cache.put(verdict(OK, OK))
    assert call(app, "/readyz")[::2] == (200, "healthy\n")
    app.cache.put(verdict(OK, WARN))
    assert call(app, "/readyz")[::2] == (200, "degraded\n")
    app.cache.put(verdict(OK, FAIL, FAIL))
    assert call(app, "/readyz")[::2] == (503, "c1: reason 1; c2: reason 2\n")
    app.cache.put(verdict(applicable=False))
    assert call(app, "/readyz")[::2] == (200, "not_applicable\n")


def test_livez_turns_503_when_the_loop_is_stuck(app):
    app.cache.put(verdict(OK))
    app.cache.clock.advance(STALE + 1)
    code, _, body = call(app, "/livez")
    assert code == 503 and body.startswith("watch loop stuck: no verdict for 101s")


def test_status_json(app):
    app.cache.put(verdict(OK, FAIL))
    code, headers, body = call(app, "/status")
    data = json.loads(body)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert data["alive"] is True and data["cycles"] == 1
    assert data["verdict"]["state"] == "unhealthy"
    assert [c["status"] for c in data["verdict"]["checks"]] == ["ok", "fail"]


def test_get_only_and_unknown_paths(app):
    code, headers, _ = call(app, "/readyz", method="POST")
    assert code == 405 and headers["Allow"] == "GET"
    assert call(app, "/readyz", method="HEAD")[0] == 405
    assert call(app, "/nope")[0] == 404
    assert call(app, "/")[0] == 404


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams, name, **labels):
    for fam in fams.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((name, labels))


def test_metrics_from_a_real_cycle_parse_back(tmp_path, app):
    healthy_node(tmp_path)
    real = health(tmp_path, FakeHost(tmp_path)).check_once()
    app.cache.put(real, healed="published")
    code, headers, body = call(app, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = families(body)
    assert sample(fams, "grid_agent_driver_ready") == 1.0
    assert sample(fams, "grid_agent_check_status", check="license", status="ok") == 1.0
    assert sample(fams, "grid_agent_check_status", check="license", status="fail") == 0.0
    assert sample(fams, "grid_agent_driver_info", version="580.105.08",
                  module_type="proprietary", cuda_version="13.0") == 1.0
    assert sample(fams, "grid_agent_gpu_info", profile="DC-4-96Q",
                  pci_bus_id="00000000:00:02.0", virtualization_mode="VGPU") == 1.0
    assert sample(fams, "grid_agent_license_licensed", state="licensed") == 1.0
    assert sample(fams, "grid_agent_license_expiry_timestamp_seconds") == 1783440104.0
    assert sample(fams, "grid_agent_last_check_timestamp_seconds") == real.checked_at
    assert sample(fams, "grid_agent_last_check_duration_seconds") == pytest.approx(real.duration)
    assert sample(fams, "grid_agent_install_info", outcome="installed") == 1.0
    assert sample(fams, "grid_agent_install_duration_seconds") == 93.5
    assert sample(fams, "grid_agent_install_exit_code") == 0.0
    assert sample(fams, "grid_agent_self_heal_total", action="published") == 1.0
    assert sample(fams, "grid_agent_check_cycles_total") == 1.0
    assert sample(fams, "grid_agent_loop_alive") == 1.0


def test_metrics_before_any_verdict_and_unhealthy(app):
    fams = families(call(app, "/metrics")[2])
    assert "grid_agent_driver_ready" not in fams and "grid_agent_loop_alive" in fams
    app.cache.put(verdict(FAIL), timed_out=True)
    fams = families(call(app, "/metrics")[2])
    assert sample(fams, "grid_agent_driver_ready") == 0.0
    assert sample(fams, "grid_agent_check_timeouts_total") == 1.0


def test_metrics_registry_is_private(app):
    from prometheus_client import REGISTRY
    assert app.registry is not REGISTRY
    assert "python_gc_objects_collected_total" not in call(app, "/metrics")[2]


def raw_request(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        chunks = []
        try:
            conn.sendall(data)
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # the server closed with our excess bytes unread: a refusal too
    return b"".join(chunks).decode(errors="replace")


def test_real_server_on_port_0(app):
    app.cache.put(verdict(OK))
    server = HealthServer(app, "127.0.0.1", 0).start()
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            assert (resp.status, resp.read()) == (200, b"healthy\n")
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            assert "grid_agent_driver_ready" in families(resp.read().decode())
        huge = b"GET /readyz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
        refused = raw_request(server.port, huge)
        assert refused == "" or " 431 " in refused.splitlines()[0]
        post = b"POST /readyz HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello"
        assert " 405 " in raw_request(server.port, post).splitlines()[0]
        # Silent clients cost a socket, never a thread (tests/host/test_probe_starvation.py).
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        with urllib.request.urlopen(f"{url}/livez", timeout=5) as resp:
            assert resp.status == 200
        for conn in silent:
            conn.close()
    finally:
        server.close()
    assert not server.thread.is_alive()


def test_the_hosts_vgpu_manager_is_a_metric(tmp_path, app):
    healthy_node(tmp_path)
    dev = tmp_path / "sys/bus/pci/devices/0000:00:02.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n")
    (dev / "config").write_bytes(config_space())
    app.cache.put(health(tmp_path, FakeHost(tmp_path)).check_once())
    fams = families(call(app, "/metrics")[2])
    assert sample(fams, "grid_agent_vgpu_host_info", host_version="595.58.02",
                  host_branch="R595", vgpu_release="20") == 1.0
    assert sample(fams, "grid_agent_check_status", check="host_branch", status="warn") == 1.0


def test_no_vgpu_host_metric_when_unknown(tmp_path, app):
    healthy_node(tmp_path)
    app.cache.put(health(tmp_path, FakeHost(tmp_path)).check_once())
    fams = families(call(app, "/metrics")[2])
    with pytest.raises(KeyError):
        sample(fams, "grid_agent_vgpu_host_info")
