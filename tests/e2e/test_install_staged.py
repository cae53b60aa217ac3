"""Driver upgrades on a busy node through the reboot coordinator (GRID_AGENT_REBOOT_SENTINEL):
staged, the init container waits, the reboot installs the new pin from the cache."""

import contextlib
import os
import signal
import subprocess
import threading

import pytest

from agent.handoff import MARKER_CONTENT
from tests.e2e.healthrun import Watch
from tests.e2e.installrun import (
    MARKER,
    REPO,
    _descendants,
    _environ,
    agent_argv,
    catalog_env,
    driver_root_mounted,
    host_text,
    record,
    run_agent,
)
from tests.simnode.driver_run import build_fake_run
from tests.simnode.host import default_kernel_release

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

NEW = "580.126.09-grid-azure"
SENTINEL = "/var/run/reboot-required"
ON_HOST = "/run/reboot-required"  # /var/run links to /run: read it there (never the machine's)
BLACKLIST = "/etc/modprobe.d/grid-agent-staged-upgrade.conf"


@pytest.fixture(scope="module")
def new_run(tmp_path_factory):
    """A second release of the fake driver (its kbuild for the node's kernel only)."""
    return build_fake_run(tmp_path_factory.mktemp("new-run"), NEW,
                          releases=[default_kernel_release()])


@pytest.fixture
def upgrade(http_server, new_run):
    import hashlib

    path = f"/{new_run.name}"
    http_server.add(path, new_run.read_bytes())
    return catalog_env(http_server.url(path), hashlib.sha256(new_run.read_bytes()).hexdigest(),
                       GRID_AGENT_REBOOT_SENTINEL=SENTINEL, GRID_AGENT_WATCH_INTERVAL="0.3",
                       GRID_AGENT_KERNEL_MODULE_TYPE="open", GRID_AGENT_DRIVER_VERSION=NEW)


def start_install(simnode, env) -> Watch:
    proc = subprocess.Popen(agent_argv(simnode.agent_args(), "install"), env=_environ(env),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    waiting = Watch(proc)
    threading.Thread(target=waiting._read, daemon=True).start()
    return waiting


def kill_tree(waiting: Watch, sig: int = signal.SIGKILL) -> None:
    """The container runtime's kill: the agent and everything it started (umockdev-run's
    python child included)."""
    for pid in [waiting.proc.pid, *_descendants(waiting.proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    waiting.proc.wait(timeout=10)


def busy_node_on_the_old_driver(simnode, catalog):
    first = run_agent(simnode.agent_args(), {**catalog, "GRID_AGENT_KERNEL_MODULE_TYPE": "open"},
                      "install")
    assert first.returncode == 0, first.stderr[-3000:]
    simnode.set_scenarios("healthy", "module-in-use")  # a CUDA process holds /dev/nvidia0
    return host_text(simnode, "/sys/module/nvidia/version")


def test_busy_node_stages_waits_and_installs_from_the_cache_after_the_reboot(
        simnode, catalog, upgrade, http_server):
    old = busy_node_on_the_old_driver(simnode, catalog)
    http_server.reset_counters()
    waiting = start_install(simnode, upgrade)
    try:
        waiting.wait_event("upgrade_staged", timeout=120)
        waiting.wait_event("upgrade_staged_waiting", count=2, timeout=30)
        assert waiting.proc.poll() is None  # waiting, not crash-looping
        staged = record(simnode)["staged"]
        assert staged["version"] == NEW and staged["from_version"] == "580.105.08-grid-azure"
        assert "cuda-app" in " ".join(staged["blocked_by"])
        assert record(simnode)["version"] == "580.105.08-grid-azure"  # still the old driver's
        assert host_text(simnode, ON_HOST) == "*** System restart required ***\n"
        assert f"nvidia-grid-driver-{NEW}" in host_text(simnode, ON_HOST + ".pkgs")
        assert "blacklist nvidia\n" in host_text(simnode, BLACKLIST)
        assert host_text(simnode, "/sys/module/nvidia/version") == old  # untouched
        # The running driver keeps its hand-off until the reboot.
        assert host_text(simnode, MARKER) == MARKER_CONTENT and driver_root_mounted(simnode)
        assert http_server.count() == 1  # the new installer is in the cache already
    finally:
        kill_tree(waiting)  # the reboot kills the pod
    http_server.reset_counters()
    simnode.reboot()  # what kured does after its drain
    assert host_text(simnode, "/sys/module/nvidia/version") is None  # the blacklist held
    after = run_agent(simnode.agent_args(), upgrade, "install")
    assert after.returncode == 0, after.stderr[-3000:]
    assert http_server.count() == 0 and len(after.named("installer_started")) == 1
    assert host_text(simnode, "/sys/module/nvidia/version").strip() == "580.126.09"
    assert host_text(simnode, MARKER) == MARKER_CONTENT
    assert "staged" not in record(simnode) and record(simnode)["version"] == NEW
    assert host_text(simnode, BLACKLIST) is None and host_text(simnode, ON_HOST) is None


def test_a_drained_node_installs_without_a_reboot(simnode, catalog, upgrade):
    busy_node_on_the_old_driver(simnode, catalog)
    waiting = start_install(simnode, upgrade)
    try:
        waiting.wait_event("upgrade_staged_waiting", timeout=120)
        simnode.set_scenarios("healthy")  # the drain: the CUDA process is gone
        assert waiting.proc.wait(timeout=120) == 0
    finally:
        if waiting.proc.poll() is None:
            kill_tree(waiting)
    assert waiting.named("staged_upgrade_unblocked")
    assert host_text(simnode, "/sys/module/nvidia/version").strip() == "580.126.09"
    assert "staged" not in record(simnode)
    assert host_text(simnode, ON_HOST) is None and host_text(simnode, BLACKLIST) is None


def test_without_the_setting_it_is_still_exit_6(simnode, catalog, upgrade):
    busy_node_on_the_old_driver(simnode, catalog)
    env = {k: v for k, v in upgrade.items() if k != "GRID_AGENT_REBOOT_SENTINEL"}
    result = run_agent(simnode.agent_args(), env, "install")
    assert result.returncode == 6 and "reboot required" in result.error()
    assert host_text(simnode, ON_HOST) is None and "staged" not in record(simnode)


@pytest.mark.parametrize("event", ["upgrade_staged", "upgrade_staged_waiting"])
def test_killed_while_staging_or_waiting_then_the_reboot_converges(simnode, catalog, upgrade,
                                                                   event):
    old = busy_node_on_the_old_driver(simnode, catalog)
    waiting = start_install(simnode, upgrade)
    try:
        waiting.wait_event(event, timeout=120)
    finally:
        kill_tree(waiting)
    assert host_text(simnode, "/sys/module/nvidia/version") == old
    assert host_text(simnode, MARKER) == MARKER_CONTENT and driver_root_mounted(simnode)
    again = start_install(simnode, upgrade)  # the restarted init container stages again
    try:
        again.wait_event("upgrade_staged_waiting", timeout=120)
    finally:
        kill_tree(again)
    simnode.reboot()
    after = run_agent(simnode.agent_args(), upgrade, "install")
    assert after.returncode == 0, after.stderr[-3000:]
    assert record(simnode)["version"] == NEW and "staged" not in record(simnode)


def test_sigterm_in_the_staged_wait_exits_143_saying_staged_and_the_reboot_converges(
        simnode, catalog, upgrade, http_server, tmp_path):
    old = busy_node_on_the_old_driver(simnode, catalog)
    term = tmp_path / "termination-log"
    env = {**upgrade, "GRID_AGENT_TERMINATION_LOG": str(term)}
    waiting = start_install(simnode, env)
    try:
        waiting.wait_event("upgrade_staged_waiting", timeout=120)
        # Written before the wait: a drain or reboot that SIGKILLs the container leaves it.
        staged = term.read_text()
        assert staged.startswith(f"upgrade to {NEW} (from 580.105.08-grid-azure) staged, "
                                 f"waiting for reboot: the loaded NVIDIA driver is in use")
        assert f"{SENTINEL} is written" in staged and "reboot coordinator" in staged
        waiting.proc.send_signal(signal.SIGTERM)  # the kubelet's stop: the agent alone
        assert waiting.proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if waiting.proc.poll() is None:
            kill_tree(waiting)
    message = term.read_text()
    assert message.startswith("stopped by SIGTERM after ") and message.count("\n") == 1
    assert f"upgrade to {NEW} (from 580.105.08-grid-azure) staged, waiting for reboot" in message
    assert SENTINEL in message and "state.json keeps `staged`" in message
    assert "http" not in message  # no URL (a mirror's may carry a token)
    assert waiting.named("command_failed")[-1]["exit_code"] == 143
    assert not waiting.named("internal_error")  # no traceback
    # Nothing half-done: the staging stays for the reboot, the old driver runs on.
    assert record(simnode)["staged"]["version"] == NEW
    assert record(simnode)["version"] == "580.105.08-grid-azure"
    assert "blacklist nvidia\n" in host_text(simnode, BLACKLIST)
    assert host_text(simnode, ON_HOST) == "*** System restart required ***\n"
    assert host_text(simnode, "/sys/module/nvidia/version") == old
    http_server.reset_counters()
    simnode.reboot()
    after = run_agent(simnode.agent_args(), upgrade, "install")
    assert after.returncode == 0, after.stderr[-3000:]
    assert http_server.count() == 0 and len(after.named("installer_started")) == 1
    assert record(simnode)["version"] == NEW and "staged" not in record(simnode)
    assert host_text(simnode, BLACKLIST) is None and host_text(simnode, ON_HOST) is None
