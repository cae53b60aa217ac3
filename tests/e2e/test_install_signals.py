"""SIGTERM in the middle of the installer, on the simulated node (issue 12 item 5).

The agent alone gets the signal (as from kubelet's graceful stop), not its process tree:
it must stop the installer's whole process group itself, record the failure, write the
termination message, and leave nothing running; a re-run converges. An installer left
alive by something else blocks the next install with exit 8.
"""

import signal
import subprocess
import time

import pytest

from agent.handoff import MARKER_CONTENT
from agent.host.procs import running_installers
from tests.e2e.installrun import (
    MARKER,
    _environ,
    agent_argv,
    host_text,
    parse_events,
    record,
    run_agent,
)

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def start_install(simnode, env):
    return subprocess.Popen(agent_argv(simnode.agent_args(), "install"), env=_environ(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_installer(simnode, proc, timeout=240):
    """Until the installer runs in the node (the agent's `installer` step started)."""
    deadline = time.monotonic() + timeout
    lines = []
    for line in proc.stderr:
        lines.append(line)
        events = parse_events(line)
        if events and events[0].get("event") == "installer_started":
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    while not any("nvidia-installer" in cmd for _, cmd in running_installers(simnode.root)):
        assert time.monotonic() < deadline, "no installer process in the node"
        time.sleep(0.1)
    return lines


def test_sigterm_mid_installer_stops_it_records_the_failure_and_a_rerun_converges(
        simnode, catalog, tmp_path):
    simnode.set_scenarios("healthy", "installer-slow")
    term = tmp_path / "termination-log"
    env = {**catalog, "GRID_AGENT_TERMINATION_LOG": str(term), "GRID_AGENT_LOG_LEVEL": "debug"}
    proc = start_install(simnode, env)
    try:
        lines = wait_for_installer(simnode, proc)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = parse_events("".join(lines) + rest)
    assert proc.returncode == 128 + signal.SIGTERM, rest[-3000:]
    assert time.monotonic() - began < 30
    assert running_installers(simnode.root) == []  # the whole group went with the agent
    state = record(simnode)
    assert state["outcome"] == "failed" and state["exit_code"] == 143
    assert "stopped by SIGTERM" in term.read_text()
    assert [e["name"] for e in events if e.get("event") == "step_failed"] == ["installer"]
    assert host_text(simnode, MARKER) is None
    # Under the lock (command_failed is logged after it is let go): the record, then the
    # termination message; a second agent waiting for the lock finds both.
    names = [e.get("event") for e in events]
    assert (names.index("install_recorded") < names.index("termination_message_written")
            < names.index("command_failed"))

    simnode.set_scenarios("healthy")
    rerun = run_agent(simnode.agent_args(), catalog, "install")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert host_text(simnode, MARKER) == MARKER_CONTENT
    assert record(simnode)["outcome"] == "installed"


def test_an_installer_still_alive_blocks_the_next_install(simnode, catalog):
    # A `.run` an earlier agent started and nobody stopped (e.g. the agent was SIGKILLed
    # alone): the next install must not start a second one.
    simnode.exec(["sh", "-c", "cp /bin/sleep /tmp/nvidia-installer && "
                  "setsid /tmp/nvidia-installer 120 </dev/null >/dev/null 2>&1 &"])
    try:
        deadline = time.monotonic() + 10
        while not running_installers(simnode.root):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        blocked = run_agent(simnode.agent_args(), catalog, "install")
        assert blocked.returncode == 8, blocked.stderr[-3000:]
        assert "an NVIDIA installer is still running on the host (pid" in blocked.error()
        assert "Traceback" not in blocked.stderr
        assert record(simnode) is None  # nothing was attempted
    finally:
        for pid, _ in running_installers(simnode.root):
            simnode.exec(["kill", "-9", str(pid)], check=False)
    deadline = time.monotonic() + 10
    while running_installers(simnode.root):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    rerun = run_agent(simnode.agent_args(), catalog, "install")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
