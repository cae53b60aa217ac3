"""`grid-agent fetch` end to end through the CLI, against the loopback server."""

import hashlib

import pytest

from agent.cli import run_cli
from tests.simnode.httpd import Reply, random_bytes

DATA = random_bytes(1 << 20)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"


@pytest.fixture
def mirror(http_server, monkeypatch, tmp_path):
    """The agent pointed at the loopback server as an HTTP mirror; returns its CLI args."""
    http_server.add(f"/m/{NAME}", DATA)
    for key, value in {"DRIVER_URL": http_server.url(f"/m/{NAME}"), "DRIVER_SHA256": SHA,
                       "ALLOW_HTTP_MIRROR": "true", "DOWNLOAD_READ_TIMEOUT": "5",
                       "LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(f"GRID_AGENT_{key}", value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    (tmp_path / "host").mkdir()  # a host root exists; the agent never creates it
    return ["--no-nsenter", "--host-root", str(tmp_path / "host"), "fetch"]


@pytest.fixture
def term(tmp_path):
    path = tmp_path / "termination-log"
    return path, {"GRID_AGENT_TERMINATION_LOG": str(path)}


def test_fetch_fills_the_cache_then_makes_no_request(mirror, http_server, tmp_path, capsys,
                                                     term):
    _, env = term
    assert run_cli(mirror, env) == 0
    host_path = f"/var/cache/grid-agent/{SHA}/{NAME}"
    assert capsys.readouterr().out.strip() == host_path
    assert (tmp_path / "host" / host_path.lstrip("/")).read_bytes() == DATA
    assert http_server.count() == 1
    http_server.reset_counters()
    assert run_cli(mirror, env) == 0
    assert capsys.readouterr().out.strip() == host_path
    assert http_server.count() == 0


def test_fetch_404_is_exit_5_without_retry(mirror, http_server, term, tmp_path):
    path, env = term
    http_server.plan(f"/m/{NAME}", Reply.status(404))
    assert run_cli(mirror, env) == 5
    assert "answered 404" in path.read_text()
    assert http_server.count() == 1
    assert not any((tmp_path / "host/var/cache/grid-agent").rglob("*.run*"))


def test_fetch_wrong_pin_is_exit_5_with_nothing_left(mirror, http_server, term, tmp_path,
                                                     monkeypatch):
    path, env = term
    monkeypatch.setenv("GRID_AGENT_DRIVER_SHA256", "0" * 64)
    assert run_cli(mirror, env) == 5
    assert f"expected {'0' * 64}, got {SHA}" in path.read_text()
    assert list((tmp_path / "host/var/cache/grid-agent").iterdir()) == []


def test_fetch_refuses_plain_http_without_the_opt_in(mirror, http_server, term, monkeypatch):
    path, env = term
    monkeypatch.setenv("GRID_AGENT_ALLOW_HTTP_MIRROR", "false")
    assert run_cli(mirror, env) == 2
    assert "GRID_AGENT_ALLOW_HTTP_MIRROR" in path.read_text()
    assert http_server.count() == 0


# -- secrets in the URL never reach logs or the termination message (issue 12 item 8) ---


def secret_url(http_server):
    base = http_server.url(f"/m/{NAME}")
    return base.replace("http://", "http://agent:hunter2@") + "?sv=2024&sig=SASSECRET"


@pytest.mark.parametrize("fault", [None, Reply.status(404), Reply.status(503), "refused"])
def test_no_secret_in_logs_or_termination_message(mirror, http_server, term, monkeypatch,
                                                  capfd, fault):
    path, env = term
    url = secret_url(http_server)
    if fault == "refused":
        url = url.replace(str(http_server.server_address[1]), "1")  # nothing listens there
        monkeypatch.setenv("GRID_AGENT_DOWNLOAD_ATTEMPTS", "1")
    elif fault is not None:
        http_server.plan(f"/m/{NAME}", *[fault] * 6)
        monkeypatch.setenv("GRID_AGENT_DOWNLOAD_ATTEMPTS", "1")
    monkeypatch.setenv("GRID_AGENT_DRIVER_URL", url)
    code = run_cli(mirror, env)
    out, err = capfd.readouterr()
    assert code == (0 if fault is None else 5), err[-2000:]
    text = out + err + (path.read_text() if path.exists() else "")
    assert "hunter2" not in text and "SASSECRET" not in text, text[-2000:]
    assert "http://***@127.0.0.1" in err  # download_started names the host, not the secrets
