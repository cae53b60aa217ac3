"""Broken host paths on the simulated node exit with their step's code and the path, never
a traceback or exit 1 (issue 12 item 6), and a re-run after the repair converges."""

import pytest

from tests.e2e.installrun import run_agent

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def make_dir(node, host_path):
    node.exec(["sh", "-c", f"rm -rf {host_path} && mkdir -p {host_path}/x"])


@pytest.mark.parametrize(("host_path", "code", "named"), [
    ("/run/grid-agent/lock", 6, "/run/grid-agent/lock"),
    ("/run/nvidia/validations/.driver-ctr-ready", 6, ".driver-ctr-ready"),
    ("/var/lib/grid-agent/state.json", 6, "state.json"),
])
def test_a_directory_where_a_file_belongs(simnode, catalog, host_path, code, named):
    make_dir(simnode, host_path)
    run = run_agent(simnode.agent_args(), catalog, "install")
    assert run.returncode == code, run.stderr[-3000:]
    assert named in run.error() and "Traceback" not in run.stderr
    assert not run.named("internal_error")
    simnode.exec(["rm", "-rf", host_path])
    assert run_agent(simnode.agent_args(), catalog, "install").returncode == 0


def test_a_full_disk_under_the_state_directory(simnode, catalog):
    simnode.exec(["sh", "-c", "mkdir -p /var/lib/grid-agent && "
                  "mount -t tmpfs -o size=8k,mode=0755 grid-state /var/lib/grid-agent && "
                  "dd if=/dev/zero of=/var/lib/grid-agent/fill bs=4k count=8 2>/dev/null; true"])
    try:
        run = run_agent(simnode.agent_args(), catalog, "install")
        assert run.returncode == 6, run.stderr[-3000:]
        assert "No space left on device" in run.error() and "Traceback" not in run.stderr
    finally:
        simnode.exec(["umount", "/var/lib/grid-agent"], check=False)
    assert run_agent(simnode.agent_args(), catalog, "install").returncode == 0


@pytest.mark.parametrize("hostile", [
    "mkfifo /var/lib/grid-agent/state.json",
    "python3 -c 'print(\"[\" * 300000)' > /var/lib/grid-agent/state.json",
    "echo '{\"exit_code\": \"0\", \"outcome\": 5}' > /var/lib/grid-agent/state.json",
])
def test_a_hostile_state_json_is_no_record(simnode, catalog, hostile):
    simnode.exec(["sh", "-c", f"mkdir -p /var/lib/grid-agent && rm -f "
                  f"/var/lib/grid-agent/state.json && {hostile}"])
    run = run_agent(simnode.agent_args(), catalog, "install", timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.named("install_record_unreadable")
    check = run_agent(simnode.agent_args(), catalog, "check")
    assert check.returncode == 0 and "Traceback" not in check.stderr
    simnode.exec(["sh", "-c", f"rm -f /var/lib/grid-agent/state.json && {hostile}"])
    gone = run_agent(simnode.agent_args(), catalog, "uninstall")
    assert gone.returncode == 0, gone.stderr[-3000:]


def test_a_file_where_the_driver_root_belongs(simnode, catalog):
    simnode.exec(["sh", "-c", "umount -l /run/nvidia/driver 2>/dev/null; rm -rf "
                  "/run/nvidia/driver && mkdir -p /run/nvidia && echo x > /run/nvidia/driver"])
    run = run_agent(simnode.agent_args(), catalog, "install")
    assert run.returncode == 6, run.stderr[-3000:]
    assert "/run/nvidia/driver" in run.error() and "Traceback" not in run.stderr
    assert not run.named("internal_error")
    simnode.exec(["rm", "-f", "/run/nvidia/driver"])
    assert run_agent(simnode.agent_args(), catalog, "install").returncode == 0
