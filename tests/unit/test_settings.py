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
