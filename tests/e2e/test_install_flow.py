"""install/run on the simulated node: fresh install, fast path, reboot, lock, gate, dry run."""

import fcntl
import os

import pytest

from agent.handoff import MARKER_CONTENT
from tests.e2e.installrun import (
    MARKER,
    STATE,
    driver_root_mounted,
    host_text,
    record,
    run_agent,
    run_agent_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def install(simnode, env, *extra, **kw):
    return run_agent(simnode.agent_args(), env, "install", *extra, **kw)


def test_fresh_install_then_fast_path(simnode, catalog):
    first = install(simnode, catalog)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.changed()["installer"] is True
    assert host_text(simnode, MARKER) == MARKER_CONTENT
    assert driver_root_mounted(simnode)
    assert simnode.path("/usr/bin/nvidia-smi").stat().st_size > 0
    assert list(simnode.path(f"/lib/modules/{simnode.kernel_release}").rglob("nvidia.ko*"))
    rec = record(simnode)
    assert (rec["outcome"], rec["exit_code"], rec["module_type"]) == ("installed", 0, "open")
    assert rec["kernel_release"] == simnode.kernel_release
    second = install(simnode, {**catalog, "GRID_AGENT_LOG_LEVEL": "debug"})
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.named("fast_path_taken")
    assert "preflight" not in second.steps() and "installer" not in second.steps()
    # One snapshot: exactly these three host processes (scripts/bench fastpath counts them).
    ran = [e["argv"][e["argv"].index("--") + 1:] if "--" in e["argv"] else e["argv"]
           for e in second.named("host_command")]
    assert ran == [["uname", "-r"], ["nvidia-smi"], ["nvidia-smi", "-q", "-x"]], ran
    assert record(simnode)["outcome"] == "fast_path"


def test_reboot_republishes_without_rebuilding(simnode, catalog):
    assert install(simnode, catalog).returncode == 0
    simnode.reboot()
    assert host_text(simnode, MARKER) is None and not driver_root_mounted(simnode)
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.named("fast_path_taken") and "installer" not in again.steps()
    assert host_text(simnode, MARKER) == MARKER_CONTENT and driver_root_mounted(simnode)


def test_reboot_without_autoload_loads_without_rebuilding(simnode, catalog):
    assert install(simnode, catalog).returncode == 0
    simnode.reboot(autoload=False)
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.changed()["installer"] is False
    assert again.changed()["load"] is True
    assert host_text(simnode, MARKER) == MARKER_CONTENT


def test_not_a_target_node_changes_nothing(simnode, catalog):
    result = install(simnode, catalog, device="h100")
    assert result.returncode == 0
    assert result.named("not_a_target_node")
    assert record(simnode) is None and host_text(simnode, MARKER) is None
    assert not simnode.path("/run/grid-agent/lock").exists()


def hold_lock(simnode):
    path = simnode.path("/run/grid-agent/lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_lock_held_exits_8_or_waits(simnode, catalog):
    fd = hold_lock(simnode)
    lock = simnode.path("/run/grid-agent/lock")
    released = []

    def release_while_it_waits(proc):
        # The agent said it waits: it is still running, has done nothing the lock guards
        # (no record, its pid not written into the lock), and only now is the lock let go.
        released.append((proc.poll(), record(simnode), lock.read_text()))
        fcntl.flock(fd, fcntl.LOCK_UN)

    try:
        held = install(simnode, catalog)
        assert held.returncode == 8
        assert "holds /run/grid-agent/lock" in held.error()
        assert record(simnode) is None  # the holder's work is not ours to record
        waited, saw_waiting = run_agent_until(simnode.agent_args(), catalog, "install",
                                              "--wait-lock", event="lock_waiting",
                                              then=release_while_it_waits)
        assert saw_waiting, waited.stderr[-3000:]
        assert released == [(None, None, "")]
        assert waited.returncode == 0, waited.stderr[-3000:]
        assert len(waited.named("lock_waiting")) == 1
        assert record(simnode)["outcome"] == "installed"
    finally:
        os.close(fd)


def test_run_reports_in_plain_words_and_dry_run_changes_nothing(simnode, catalog):
    plan = run_agent(simnode.agent_args(), catalog, "run", "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "act   installer" in plan.stdout and "dry run, nothing changed" in plan.stdout
    assert record(simnode) is None and host_text(simnode, STATE) is None
    assert not list(simnode.path("/var/cache").rglob("*.run"))
    done = run_agent(simnode.agent_args(), catalog, "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "result: driver installed and verified" in done.stdout
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()
            if len(line.split()) > 1}
    assert rows["nvidia_smi"] == "ok" and rows["handoff"] == "ok" and "license" in rows
    assert "verdict:" in done.stdout and "(ready)" in done.stdout
    plan = run_agent(simnode.agent_args(), catalog, "install", "--dry-run")
    assert "only (re)publish" in plan.stdout


def test_auto_module_type_and_dkms_when_the_host_has_it(simnode, catalog):
    simnode.set_scenarios("healthy", "dkms")  # the rig's dkms: real kbuilds, real tree
    result = install(simnode, {**catalog, "GRID_AGENT_KERNEL_MODULE_TYPE": "auto"})
    assert result.returncode == 0, result.stderr[-3000:]
    argv = result.named("installer_started")[0]["argv"]
    assert "--dkms" in argv
    chosen = argv[argv.index("-M") + 1]
    assert chosen == "open"  # what the real 580 installer recommends for 10de:2bb5
    assert record(simnode)["module_type"] == chosen
    assert simnode.exec(["dkms", "status"]).stdout.endswith(": installed\n")
