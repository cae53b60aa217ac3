"""The namespace host itself: up/down, isolation from the machine, its mounts and stubs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.simnode.host import SCENARIO_FILE, SimNode

pytestmark = pytest.mark.simnode


def machine_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_up_and_down_in_well_under_a_second():
    started = time.monotonic()
    node = SimNode().start()
    up = time.monotonic() - started
    pid = node.pid
    assert Path(f"/proc/{pid}/root/usr/bin/nsenter").exists()
    started = time.monotonic()
    node.stop()
    down = time.monotonic() - started
    assert up < 1.0, up
    assert down < 0.5, down
    assert not Path(f"/proc/{pid}").exists()


def test_teardown_leaves_no_process_and_no_mount():
    before = machine_mounts()
    node = SimNode().start()
    pid, upid, stage = node.pid, node.unshare_pid, node._stage
    node.exec(["sh", "-c", "sleep 300 >/dev/null 2>&1 & mkdir -p /run/leak-check && "
               "mount --rbind / /run/leak-check && "
               "mkdir -p /run/leak && mount -t tmpfs x /run/leak"])
    inside = set(os.listdir(f"/proc/{pid}/root/proc"))
    assert len([p for p in inside if p.isdigit()]) >= 2  # init and the orphaned sleep
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    node.stop()
    assert not Path(f"/proc/{pid}").exists() and not Path(f"/proc/{upid}").exists()
    assert stage is None or not stage.exists()
    assert machine_mounts() == before
    still = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "ns/pid") == ns:
                still.append(proc.name)
        except OSError:
            continue
    assert still == []


def test_nsenter_rbind_is_seen_by_the_host_and_not_by_the_machine(simnode):
    simnode.exec(["mkdir", "-p", "/run/nvidia/driver"])
    simnode.exec(["mount", "--rbind", "/", "/run/nvidia/driver"])
    host = simnode.mountinfo()
    assert " /run/nvidia/driver " in host
    assert simnode.path("/run/nvidia/driver/etc/os-release").read_text().startswith(
        'PRETTY_NAME="Ubuntu 22.04')
    assert "/run/nvidia/driver" not in machine_mounts()
    assert not Path("/run/nvidia/driver/etc").exists()


def test_host_has_its_own_proc_and_the_mounts_the_contract_names(simnode):
    lines = {ln.split()[4]: ln for ln in simnode.mountinfo().splitlines()}
    assert "shared:" in lines["/run"]  # rshared, as the GPU Operator needs
    assert " - tmpfs " in lines["/sys/module"] and " - tmpfs " in lines["/proc/driver"]
    assert " - overlay " in lines["/usr"] and " - overlay " in lines["/etc"]
    ps = simnode.exec(["ps", "-o", "pid=", "-p", "1"]).stdout.strip()
    assert ps == "1"
    assert list(simnode.path("/sys/module").iterdir()) == []
    assert simnode.exec(["cat", "/proc/1/cmdline"]).stdout.startswith("/bin/sh")


def test_agent_args_path_and_root_point_at_the_host(simnode):
    pid = simnode.pid
    assert simnode.agent_args() == ["--host-pid", str(pid), "--host-root", f"/proc/{pid}/root"]
    assert simnode.path("/etc/os-release") == Path(f"/proc/{pid}/root/etc/os-release")
    assert simnode.root.read_text("/etc/grid-sim/kernel_release").strip() == \
        simnode.kernel_release


def test_uname_reports_a_release_whose_debian_headers_exist(simnode):
    release = simnode.exec(["uname", "-r"]).stdout.strip()
    assert release == simnode.kernel_release != os.uname().release
    assert release in simnode.exec(["uname", "-a"]).stdout
    assert simnode.exec(["uname", "-m"]).stdout.strip() == "x86_64"
    build = simnode.root.resolve(f"/lib/modules/{release}/build")
    assert (build / "Makefile").exists() and (build / ".config").exists()
    assert Path(f"/usr/src/linux-headers-{release}/Makefile").exists()  # the machine's own


def test_usr_is_writable_in_the_host_only(simnode):
    simnode.exec(["sh", "-c", "echo sim > /usr/bin/grid-sim-probe && "
                  "echo sim > /usr/lib/x86_64-linux-gnu/grid-sim-probe.so"])
    assert simnode.path("/usr/bin/grid-sim-probe").read_text() == "sim\n"
    assert not Path("/usr/bin/grid-sim-probe").exists()
    assert not Path("/usr/lib/x86_64-linux-gnu/grid-sim-probe.so").exists()
    with pytest.raises(subprocess.CalledProcessError):
        simnode.exec(["touch", f"/usr/src/linux-headers-{simnode.kernel_release}/x"])


def test_set_scenarios_writes_the_file_and_rejects_unknown_names(simnode):
    assert simnode.scenarios() == ("healthy",)
    simnode.set_scenarios("unlicensed", "mig-disabled")
    assert simnode.path(SCENARIO_FILE).read_text() == "unlicensed\nmig-disabled\n"
    with pytest.raises(ValueError, match="no-such"):
        simnode.set_scenarios("no-such")


def test_reboot_empties_run_and_module_state_and_keeps_the_disk(simnode):
    simnode.exec(["sh", "-c", "mkdir -p /run/nvidia/driver /run/nvidia/validations && "
                  "mount --rbind / /run/nvidia/driver && touch /run/nvidia/validations/x "
                  "/etc/kept /var/kept && mkdir -p /sys/module/nvidia"])
    simnode.reboot()
    assert not simnode.path("/run/nvidia").exists()
    assert "/run/nvidia/driver" not in simnode.mountinfo()
    assert "shared:" in next(ln for ln in simnode.mountinfo().splitlines()
                             if ln.split()[4] == "/run")
    assert not simnode.path("/sys/module/nvidia").exists()
    assert simnode.path("/etc/kept").exists() and simnode.path("/var/kept").exists()
    assert simnode.path("/run/systemd/system").is_dir()


def test_a_killed_parent_takes_its_node_along():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.simnode.host import SimNode;"
            "n = SimNode().start(); print(n.pid, n.unshare_pid, flush=True);"
            "import time; time.sleep(60)")
    repo = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen([sys.executable, "-c", code, repo], stdout=subprocess.PIPE,
                              text=True)
    pid, upid = map(int, parent.stdout.readline().split())
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while (Path(f"/proc/{pid}").exists() or Path(f"/proc/{upid}").exists()) and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists() and not Path(f"/proc/{upid}").exists()


def test_the_node_has_its_own_hostname(simnode):
    assert simnode.exec(["uname", "-n"]).stdout.strip() == "rtx-sim"
    assert Path("/proc/sys/kernel/hostname").read_text().strip() != "rtx-sim"
