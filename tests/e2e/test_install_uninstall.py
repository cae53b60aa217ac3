"""uninstall on the simulated node, and uninstall-then-install round trips."""

import pytest

from agent.handoff import MARKER_CONTENT
from tests.e2e.installrun import (
    MARKER,
    driver_root_mounted,
    host_text,
    record,
    run_agent,
)

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def test_uninstall_then_install_round_trips(simnode, catalog):
    args = simnode.agent_args()
    assert run_agent(args, catalog, "install").returncode == 0
    gone = run_agent(args, catalog, "uninstall")
    assert gone.returncode == 0, gone.stderr[-3000:]
    assert "uninstall finished; changed: unpublish" in gone.stdout
    assert host_text(simnode, MARKER) is None and not driver_root_mounted(simnode)
    assert record(simnode) is None
    assert not simnode.path("/sys/module/nvidia").exists()
    assert not simnode.path("/usr/bin/nvidia-smi").exists()
    # The uninstaller's log, written in a private directory, published where people look.
    uninstall_log = simnode.path("/var/log/nvidia-uninstall.log")
    assert not uninstall_log.is_symlink() and "is complete" in uninstall_log.read_text()
    assert list(simnode.path("/var/cache/grid-agent").rglob("*.run"))  # kept without --purge
    again = run_agent(args, catalog, "uninstall", "--purge")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "changed: purge" in again.stdout
    assert not list(simnode.path("/var/cache/grid-agent").rglob("*.run"))
    back = run_agent(args, catalog, "install")
    assert back.returncode == 0, back.stderr[-3000:]
    assert back.changed()["installer"] is True and back.changed()["download"] is True
    assert host_text(simnode, MARKER) == MARKER_CONTENT and driver_root_mounted(simnode)


def test_uninstall_with_the_gpu_in_use_stops_before_removing(simnode, catalog):
    args = simnode.agent_args()
    assert run_agent(args, catalog, "install").returncode == 0
    simnode.set_scenarios("module-in-use")
    result = run_agent(args, catalog, "uninstall")
    assert result.returncode == 6, result.stderr[-3000:]
    assert "reboot required" in result.error() and "cuda-app" in result.error()
    assert "uninstaller" not in result.steps()
    assert host_text(simnode, MARKER) is None
    assert simnode.path("/sys/module/nvidia").exists()
    assert record(simnode) is not None
