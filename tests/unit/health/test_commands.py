"""check / probe commands, the verdict file and the health settings."""

import json
import time

import pytest

from agent.cli import run_cli
from agent.errors import ConfigError, UnhealthyError
from agent.health.commands import build_health, check_command, format_table, probe_command
from agent.health.verdict import (
    FAIL,
    OK,
    CheckResult,
    Verdict,
    make_verdict,
    probe_verdict_file,
    write_verdict_file,
)
from agent.settings import build_settings
from tests.fakes.settings import settings as fake_settings
from tests.fakes.watch import FakeHost, health, healthy_node


def settings(tmp_path, **env):
    return fake_settings(host_root=tmp_path, nsenter="false",
                         verdict_file=tmp_path / "pod/verdict.json", **env)


def test_check_healthy_prints_a_table(tmp_path):
    healthy_node(tmp_path)
    lines = []
    verdict = check_command(settings(tmp_path), as_json=False, echo=lines.append,
                            health=health(tmp_path, FakeHost(tmp_path)))
    table = lines[0].splitlines()
    assert table[0].split() == ["CHECK", "STATUS", "REASON"]
    assert table[1].split()[:3] == ["driver_loaded", "ok", "nvidia"]
    assert table[-1].startswith("verdict: healthy (ready)")
    assert verdict.ready


def test_check_unhealthy_json_and_exit_9(tmp_path):
    healthy_node(tmp_path)
    lines = []
    host = FakeHost(tmp_path, units={"nvidia-gridd": "inactive", "nvidia-persistenced": "active"})
    with pytest.raises(UnhealthyError) as err:
        check_command(settings(tmp_path), as_json=True, echo=lines.append,
                      health=health(tmp_path, host))
    assert err.value.exit_code == 9
    assert err.value.message == "node unhealthy: gridd: nvidia-gridd is inactive"
    data = json.loads(lines[0])
    assert data["state"] == "unhealthy" and data["ready"] is False


def test_build_health_uses_the_pinned_module_version(tmp_path):
    h = build_health(settings(tmp_path, driver_version="595.58.03-grid-azure",
                              expected_profile="DC-4-96Q", mig_policy="fail"))
    assert h.config.module_version == "595.58.03"
    assert (h.config.expected_profile, h.config.mig_policy) == ("DC-4-96Q", "fail")
    assert h.command_timeout == 45.0  # min(command timeout 120, check timeout 45)


def test_format_table_names_every_check():
    v = make_verdict((CheckResult("a", OK, "fine"), CheckResult("b", FAIL, "broken")),
                     started=0.0, duration=1.5)
    assert format_table(v).splitlines()[-1] == "verdict: unhealthy (not ready) in 1.50s"


def verdict(status):
    return make_verdict((CheckResult("gridd", status, "nvidia-gridd is inactive"),),
                        started=1000.0, duration=0.1)


def test_verdict_round_trips():
    v = verdict(FAIL)
    assert Verdict.from_dict(json.loads(json.dumps(v.to_dict()))) == v


@pytest.mark.parametrize(("status", "kind", "ok", "reason"), [
    (OK, "live", True, "healthy"),
    (OK, "ready", True, "healthy"),
    (FAIL, "live", True, "unhealthy"),
    (FAIL, "ready", False, "gridd: nvidia-gridd is inactive"),
])
def test_probe_answers(tmp_path, status, kind, ok, reason):
    path = tmp_path / "v.json"
    write_verdict_file(path, verdict(status), stale_after=100, now=5000.0)
    answer = probe_verdict_file(path, kind, now=5050.0)
    assert (answer.ok, answer.reason) == (ok, reason)


def test_stale_verdict_is_not_live(tmp_path):
    path = tmp_path / "v.json"
    write_verdict_file(path, verdict(OK), stale_after=100, now=5000.0)
    answer = probe_verdict_file(path, "live", now=5101.0)
    assert not answer.ok and answer.reason == "verdict is stale (101s old, limit 100s)"


@pytest.mark.parametrize("content", [None, "", "{", "[]", '{"checks": []}'])
def test_missing_or_broken_verdict_file(tmp_path, content):
    path = tmp_path / "v.json"
    if content is not None:
        path.write_text(content)
    answer = probe_verdict_file(path, "live", now=0.0)
    assert not answer.ok and answer.reason.startswith(f"no usable verdict at {path}")


def test_probe_command_and_cli(tmp_path, monkeypatch):
    s = settings(tmp_path)
    # `probe` is an app of its own, on the system clock: the file must be fresh for real.
    write_verdict_file(s.verdict_file, verdict(FAIL), stale_after=100, now=time.time())
    lines = []
    probe_command(s, "live", echo=lines.append)
    assert lines == ["live: unhealthy"]
    monkeypatch.setenv("GRID_AGENT_VERDICT_FILE", str(s.verdict_file))
    assert run_cli(["probe", "ready"], {}) == 9
    assert run_cli(["probe", "live"], {}) == 0
    assert run_cli(["probe", "sideways"], {}) == 2


@pytest.mark.parametrize(("env", "value"), [
    ({}, ("0.0.0.0", 9402)),  # noqa: S104 (the pod default; tests bind 127.0.0.1 only)
    ({"listen": "127.0.0.1:0"}, ("127.0.0.1", 0)),
    ({"listen": "[::1]:9402"}, ("::1", 9402)),
    ({"listen": "off"}, None),
    ({"listen": ""}, None),
])
def test_listen_setting(tmp_path, env, value):
    assert settings(tmp_path, **env).listen == value


@pytest.mark.parametrize(("env", "message"), [
    ({"listen": "9402"}, "GRID_AGENT_LISTEN"),
    ({"listen": "host:99999"}, "GRID_AGENT_LISTEN"),
    ({"mig_policy": "ignore"}, "GRID_AGENT_MIG_POLICY"),
    ({"check_timeout": "0"}, "GRID_AGENT_CHECK_TIMEOUT"),
    ({"license_min_remaining": "60"}, "GRID_AGENT_LICENSE_MIN_REMAINING"),
    ({"license_min_remaining": "1e9"}, "GRID_AGENT_LICENSE_MIN_REMAINING"),
])
def test_bad_health_settings_name_the_variable(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, **env)


def test_health_defaults(tmp_path):
    s = build_settings({}, {})
    assert (s.expected_profile, s.mig_policy, s.license_min_remaining, s.check_timeout,
            s.self_heal) == ("", "warn", 14400.0, 45.0, True)
    assert str(s.verdict_file) == "/run/grid-agent-pod/verdict.json"
