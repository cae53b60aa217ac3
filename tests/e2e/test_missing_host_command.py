"""A host without a command the agent relies on: the step says so, never another diagnosis."""

import pytest

from tests.e2e.installrun import MARKER, host_text, record, run_agent

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def test_no_kill_on_the_host_names_kill_not_reboot_required(simnode, catalog):
    # The old driver is held only by its own nvidia-gridd (no systemd unit): the agent must
    # `kill` it before unloading. This host has no procps (a minimal image): no `kill`.
    simnode.set_scenarios("old-driver-loaded")
    simnode.exec(["sh", "-c", "[ -e /dev/nvidia0 ] || touch /dev/nvidia0; "
                  "cp /bin/sleep /tmp/nvidia-gridd; "
                  "/tmp/nvidia-gridd 600 3</dev/nvidia0 >/dev/null 2>&1 &"])
    simnode.exec(["rm", "/usr/bin/kill"])  # the node's /usr is its own (copy-on-write)
    result = run_agent(simnode.agent_args(), catalog, "install", device="target-nvidia")
    assert result.returncode == 6, result.stderr[-3000:]
    error = result.error()
    assert error.startswith("stale_unload: `kill` is not installed on the host"), error
    assert "install procps on the host" in error and "reboot" not in error
    assert host_text(simnode, MARKER) is None
    assert (record(simnode) or {}).get("exit_code") == 6
    assert host_text(simnode, "/sys/module/nvidia/version").strip() != "580.105.08"
