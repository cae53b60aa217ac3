import json
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import cli, run_cli, termination_log_path
from agent.errors import ConfigError
from agent.settings import build_settings


@pytest.fixture
def term(tmp_path):
    path = tmp_path / "termination-log"
    return path, {"GRID_AGENT_TERMINATION_LOG": str(path)}


def test_version(capsys):
    assert run_cli(["--version"], {}) == 0
    assert capsys.readouterr().out.strip() == f"grid-agent {__version__}"


def test_help_lists_every_subcommand(capsys):
    assert run_cli(["--help"], {}) == 0
    out = capsys.readouterr().out
    for name in ("detect", "fetch", "install", "run", "watch", "check", "probe", "uninstall"):
        assert name in out


def json_lines(text):
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def test_config_error_is_exit_2_with_one_line_and_termination_message(term, capsys):
    path, env = term
    code = run_cli(["--log-format", "json", "--host-pid", "zero", "detect"], env)
    assert code == 2
    line = "invalid value 'zero' for --host-pid / GRID_AGENT_HOST_PID: must be an integer"
    assert path.read_text().startswith(line)
    events = json_lines(capsys.readouterr().err)
    assert [e["event"] for e in events] == ["command_failed"]
    assert events[0]["exit_code"] == 2
    assert events[0]["error"] == path.read_text().strip()


def test_click_usage_error_is_exit_2_and_recorded(term):
    path, env = term
    assert run_cli(["detect", "--no-such-flag"], env) == 2
    assert "no-such-flag" in path.read_text()


@pytest.fixture
def boom_command():
    @cli.command("boom-test")
    def boom() -> None:
        raise RuntimeError("kaput")

    yield
    cli.commands.pop("boom-test")


@pytest.mark.usefixtures("boom_command")
def test_unexpected_error_is_exit_1_with_traceback_logged(term, capsys):
    path, env = term
    assert run_cli(["--log-format", "json", "boom-test"], env) == 1
    assert "internal error (a bug): RuntimeError('kaput')" in path.read_text()
    event = next(e for e in json_lines(capsys.readouterr().err) if e["event"] == "internal_error")
    assert event["exception"][0]["exc_type"] == "RuntimeError"


def test_termination_log_path_prefers_the_variable(tmp_path):
    env = {"GRID_AGENT_TERMINATION_LOG": str(tmp_path / "t")}
    assert termination_log_path(env) == tmp_path / "t"




def test_missing_host_root_exits_2_and_is_never_created(tmp_path):
    missing, term = tmp_path / "no" / "such", tmp_path / "term"
    env = {"GRID_AGENT_TERMINATION_LOG": str(term)}
    for cmd in ("install", "uninstall", "fetch"):
        assert run_cli(["--no-nsenter", "--host-root", str(missing), cmd], env) == 2
        assert not missing.exists() and not missing.parent.exists()
        assert "GRID_AGENT_HOST_ROOT" in term.read_text()
    plain = tmp_path / "file"
    plain.write_text("")
    assert run_cli(["--no-nsenter", "--host-root", str(plain), "install"], env) == 2
    assert "is not a directory" in term.read_text()


@pytest.mark.parametrize(("command", "code"), [("install", 6), ("fetch", 5), ("check", 9),
                                               ("uninstall", 6), ("", 6)])
def test_an_unclassified_filesystem_error_is_the_commands_failure_with_its_path(command, code):
    from agent.cli import host_file_error

    err = host_file_error(command, IsADirectoryError(21, "Is a directory", "/run/grid-agent/lock"))
    assert err.exit_code == code
    assert "filesystem error at /run/grid-agent/lock: Is a directory" in err.line()


@pytest.mark.parametrize(("env", "value"), [
    ("GRID_AGENT_WATCH_INTERVAL", "inf"), ("GRID_AGENT_INSTALL_TIMEOUT", "1e309"),
    ("GRID_AGENT_DPKG_LOCK_WAIT", "99999999999"), ("GRID_AGENT_DRIVER_VERSION", "580/../x"),
    ("GRID_AGENT_DRIVER_URL", "https://h/x%00.run"), ("GRID_AGENT_LISTEN", "nowhere:9402"),
    ("GRID_AGENT_DRIVER_URL", "https://h/" + "n" * 300 + ".run")])
def test_hostile_settings_exit_2_naming_the_variable(monkeypatch, term, env, value):
    path, environ = term
    monkeypatch.setenv(env, value)
    assert run_cli(["install", "--dry-run"], environ) == 2
    assert env in path.read_text()


def test_termination_log_is_a_setting_that_still_works_when_settings_fail(tmp_path,
                                                                         monkeypatch):
    term = tmp_path / "t"
    env = {"GRID_AGENT_TERMINATION_LOG": str(term)}
    monkeypatch.setenv("GRID_AGENT_WATCH_INTERVAL", "soon")
    assert run_cli(["detect"], env) == 2  # settings fail...
    monkeypatch.delenv("GRID_AGENT_WATCH_INTERVAL")
    assert "GRID_AGENT_WATCH_INTERVAL" in term.read_text()  # ...the message still arrives
    assert build_settings({}, {"GRID_AGENT_TERMINATION_LOG": str(term)}).termination_log == term
    with pytest.raises(ConfigError, match="GRID_AGENT_TERMINATION_LOG: must be an absolute"):
        build_settings({}, {"GRID_AGENT_TERMINATION_LOG": "relative/t"})
    assert termination_log_path({"GRID_AGENT_TERMINATION_LOG": "relative/t"}) in (
        None, Path("/dev/termination-log"))
