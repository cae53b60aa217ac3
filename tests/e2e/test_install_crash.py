"""Crash safety: SIGKILL the agent as each step starts, re-run, and the node converges.

The marker must never exist while verification has not passed.
"""

import pytest

from agent.handoff import MARKER_CONTENT
from tests.e2e.installrun import (
    MARKER,
    driver_root_mounted,
    host_text,
    kill_at_step,
    record,
    run_agent,
)

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

BEFORE_VERIFIED = ["fast_path", "preflight", "download", "packages", "stale_unload", "nouveau",
                   "installer", "load", "persistence", "licensing", "verify", "publish"]


@pytest.mark.parametrize("step", [*BEFORE_VERIFIED, "record", "prebuild"])
def test_killed_at_step_start_then_rerun_converges(simnode, catalog, step):
    killed = kill_at_step(simnode.agent_args(), catalog, step)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert step in killed.steps(), killed.steps()
    if step in BEFORE_VERIFIED:
        assert host_text(simnode, MARKER) is None  # nothing verified yet: no hand-off
    rerun = run_agent(simnode.agent_args(), catalog, "install")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert host_text(simnode, MARKER) == MARKER_CONTENT
    assert driver_root_mounted(simnode)
    assert record(simnode)["outcome"] in ("installed", "fast_path")
    assert len(simnode.path("/proc/1/mountinfo").read_text().split(" /run/nvidia/driver ")) == 2


def test_killed_while_replacing_a_published_driver_withdraws_the_marker(simnode, catalog):
    assert run_agent(simnode.agent_args(), catalog, "install").returncode == 0
    # A new pin (another module type) must rebuild: the old hand-off goes before anything.
    env = {**catalog, "GRID_AGENT_KERNEL_MODULE_TYPE": "open"}
    killed = kill_at_step(simnode.agent_args(), env, "installer")
    assert killed.returncode == -9
    assert host_text(simnode, MARKER) is None
    rerun = run_agent(simnode.agent_args(), env, "install")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert record(simnode)["module_type"] == "open"
    assert host_text(simnode, MARKER) == MARKER_CONTENT
