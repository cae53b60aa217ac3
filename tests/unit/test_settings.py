from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.pci import PciId
from agent.settings import OPTIONS, build_settings


def build(flags=None, env=None):
    return build_settings(flags or {}, env or {})


def test_defaults():
    s = build()
    assert s.host_root == Path("/host")
    assert s.host_pid == 1
    assert s.nsenter is True
    assert s.target_ids == (PciId(0x10DE, 0x2BB5),)
    assert s.target_subsystems == ()


def test_flag_beats_environment_beats_default():
    env = {"GRID_AGENT_HOST_PID": "42", "GRID_AGENT_LOG_LEVEL": "debug"}
    s = build({"host_pid": "7"}, env)
    assert s.host_pid == 7
    assert s.log_level == "debug"


def test_no_nsenter_defaults_host_root_to_slash():
    assert build({"nsenter": "false"}).host_root == Path("/")
    assert build({"nsenter": "false", "host_root": "/x"}).host_root == Path("/x")
    assert build(env={"GRID_AGENT_NSENTER": "no"}).host_root == Path("/")


@pytest.mark.parametrize(("env", "named"), [
    ({"GRID_AGENT_HOST_PID": "0"}, "--host-pid / GRID_AGENT_HOST_PID"),
    ({"GRID_AGENT_TARGET_PCI_IDS": "10de:xyz"}, "GRID_AGENT_TARGET_PCI_IDS"),
    ({"GRID_AGENT_WATCH_INTERVAL": "-5"}, "GRID_AGENT_WATCH_INTERVAL"),
    ({"GRID_AGENT_LOG_FORMAT": "xml"}, "--log-format / GRID_AGENT_LOG_FORMAT"),
    ({"GRID_AGENT_NSENTER": "maybe"}, "--nsenter / GRID_AGENT_NSENTER"),
])
def test_invalid_values_name_flag_and_variable(env, named):
    with pytest.raises(ConfigError, match=named) as err:
        build(env=env)
    assert err.value.exit_code == 2


def test_empty_target_list_is_refused():
    with pytest.raises(ConfigError, match="GRID_AGENT_TARGET_PCI_IDS"):
        build(env={"GRID_AGENT_TARGET_PCI_IDS": ","})


def test_settings_are_frozen():
    s = build()
    with pytest.raises(AttributeError):
        s.host_pid = 2  # type: ignore[misc]


def test_every_option_has_a_grid_agent_variable_and_a_default_that_parses():
    for opt in OPTIONS:
        assert opt.env.startswith("GRID_AGENT_")
        opt.parse(opt.default)
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)


NUMERIC = [o for o in OPTIONS if o.env in {
    "GRID_AGENT_COMMAND_TIMEOUT", "GRID_AGENT_WATCH_INTERVAL", "GRID_AGENT_WATCH_JITTER",
    "GRID_AGENT_INSTALL_TIMEOUT", "GRID_AGENT_DOWNLOAD_CONNECT_TIMEOUT",
    "GRID_AGENT_DOWNLOAD_READ_TIMEOUT", "GRID_AGENT_DOWNLOAD_ATTEMPTS",
    "GRID_AGENT_DOWNLOAD_DEADLINE", "GRID_AGENT_DOWNLOAD_MIN_RATE", "GRID_AGENT_DOWNLOAD_MAX_MB",
    "GRID_AGENT_DPKG_LOCK_WAIT", "GRID_AGENT_MIN_FREE_MB", "GRID_AGENT_LICENSE_MIN_REMAINING",
    "GRID_AGENT_CHECK_TIMEOUT", "GRID_AGENT_HOST_PID"}]


def test_every_numeric_setting_is_listed():
    assert len(NUMERIC) == 15


@pytest.mark.parametrize("opt", NUMERIC, ids=lambda o: o.env)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e309", "1e18", "9" * 400, "-1", ""])
def test_numbers_are_finite_and_bounded(opt, value):
    with pytest.raises(ConfigError, match=opt.env) as err:
        build(env={opt.env: value})
    assert err.value.exit_code == 2
    assert len(err.value.line()) < 400  # a huge value is cut in the message


@pytest.mark.parametrize("version", ["../../etc", "580/1", "a580", "580 .1", "580\n1", "5" * 200])
def test_driver_version_must_be_a_safe_name(version):
    with pytest.raises(ConfigError, match="GRID_AGENT_DRIVER_VERSION"):
        build(env={"GRID_AGENT_DRIVER_VERSION": version})


@pytest.mark.parametrize("url", [
    "https://h/x%00.run", "https://h/x.run%0a", "https://h/x\x00.run", "https://h/a b.run",
    "https://h/x.run?a=%00", "ftp://h/x.run", "https:///x.run", "https://h/" + "n" * 256,
    "https://h/%ff%fe.run", "https://[::1/x.run"])
def test_driver_url_is_refused_with_its_variable(url):
    with pytest.raises(ConfigError, match="GRID_AGENT_DRIVER_URL") as err:
        build(env={"GRID_AGENT_DRIVER_URL": url})
    assert err.value.exit_code == 2


def test_driver_url_error_does_not_show_its_secrets():
    url = "https://user:hunter2@h/x%00.run?sig=SASSECRET"
    with pytest.raises(ConfigError) as err:
        build(env={"GRID_AGENT_DRIVER_URL": url})
    assert "hunter2" not in err.value.line() and "SASSECRET" not in err.value.line()


def test_good_values_still_parse():
    s = build(env={"GRID_AGENT_DRIVER_VERSION": "595.58.03-grid-azure",
                   "GRID_AGENT_DRIVER_URL": "https://u:p@mirror:8443/d/x.run?sig=a%2Fb",
                   "GRID_AGENT_WATCH_INTERVAL": "0.5", "GRID_AGENT_LISTEN": "[::]:9402"})
    assert s.watch_interval == 0.5 and s.listen == ("::", 9402)


@pytest.mark.parametrize("listen", ["example.com:9402", "999.1.1.1:9402", ":9402", "h:99999"])
def test_unbindable_listen_address_is_a_config_error(listen):
    with pytest.raises(ConfigError, match="GRID_AGENT_LISTEN"):
        build(env={"GRID_AGENT_LISTEN": listen})


@pytest.mark.parametrize("root", ["", "  "])
def test_empty_host_root_is_refused(root):
    with pytest.raises(ConfigError, match="--host-root / GRID_AGENT_HOST_ROOT"):
        build({"host_root": root})


def test_the_retired_licence_days_variable_is_ignored_and_named():
    from agent.settings import retired_in

    environ = {"GRID_AGENT_LICENSE_WARN_DAYS": "7"}
    settings = build_settings({}, environ)  # not fatal: an old manifest keeps working
    assert settings.license_min_remaining == 14400.0
    ((env, use),) = retired_in(environ)
    assert env == "GRID_AGENT_LICENSE_WARN_DAYS" and use.startswith(
        "GRID_AGENT_LICENSE_MIN_REMAINING")
    assert retired_in({}) == []


@pytest.mark.parametrize(("env", "value"), [
    ("GRID_AGENT_EXPECTED_PROFILE", "DC-4-96Q\x1b[2J"), ("GRID_AGENT_EXPECTED_PROFILE", "Q" * 129),
    ("GRID_AGENT_VERDICT_FILE", ""), ("GRID_AGENT_VERDICT_FILE", "relative/verdict.json")])
def test_text_and_path_settings_are_checked(env, value):
    with pytest.raises(ConfigError, match=env):
        build(env={env: value})
