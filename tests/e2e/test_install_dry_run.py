"""`install --dry-run` and `detect` on a node whose install would change the compiler and
remove another driver (scenarios host-gcc-11 and foreign-cuda-driver): the lines name both,
and nothing on the node changes; and a driver installed after GRID: the fast path leaves it,
`check` warns."""

import os

import pytest

from tests.e2e.healthrun import check, reason, statuses
from tests.e2e.installrun import record, run_agent

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

OTHER = "535.183.01"
WATCHED = ("/usr/bin", "/var/lib/dpkg", "/var/lib/dkms", "/usr/src", "/lib/modules",
           "/var/lib/grid-agent", "/var/cache", "/run", "/etc", "/sys/module", "/var/lib/grid-sim")


def tree(node) -> dict[str, tuple]:
    """Every entry under WATCHED on the node: kind, size, mtime, link target."""
    seen = {}
    for host_dir in WATCHED:
        top = node.path(host_dir)
        for parent, dirs, files in os.walk(top):
            for name in dirs + files:
                path = os.path.join(parent, name)
                info = os.lstat(path)
                link = os.readlink(path) if os.path.islink(path) else None
                seen[os.path.relpath(path, node.path("/"))] = (
                    info.st_mode, info.st_size, info.st_mtime_ns, link)
    return seen


def test_dry_run_and_detect_name_the_compiler_and_the_other_driver_and_change_nothing(
        simnode, catalog):
    simnode.set_scenarios("host-gcc-11", "foreign-cuda-driver")
    before = tree(simnode)
    assert f"var/lib/dkms/nvidia/{OTHER}" in before and before["usr/bin/gcc"][3] == "gcc-11"

    plan = run_agent(simnode.agent_args(), catalog, "install", "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    lines = {line.split()[1]: line for line in plan.stdout.splitlines()[1:]}
    assert lines["packages"].startswith("  act   packages")
    assert lines["packages"].endswith(
        "compiler: kernel built by 'gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0'; the host's gcc "
        "is 11: CC=gcc-12 (apt-get install gcc-12)")
    stale = lines["stale_unload"]
    assert f"driver {OTHER} is loaded" in stale
    assert "another NVIDIA driver (packages " in stale and "nvidia-driver-535" in stale
    assert f"DKMS nvidia/{OTHER}" in stale
    assert stale.endswith("remove its DKMS trees and modules, apt-get purge its packages when "
                          "unused, else exit 6 naming it and its users")

    found = run_agent(simnode.agent_args(), catalog, "detect")
    assert found.returncode == 0, found.stderr[-3000:]
    assert lines["packages"].split("; ", 1)[1] in found.stdout.splitlines()
    other = next(ln for ln in found.stdout.splitlines() if ln.startswith("another NVIDIA"))
    assert "nvidia-driver-535" in other and "; install would unload its module" in other

    assert tree(simnode) == before  # the dry run and detect changed nothing on the node
    assert record(simnode) is None
    assert simnode.exec(["sh", "-c", "command -v gcc-12"], check=False).returncode != 0
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == OTHER


def add_cuda_driver_files(node):
    """What `apt-get install nvidia-driver-535` leaves on disk, after the GRID install."""
    status = node.path("/var/lib/dpkg/status")
    status.parent.mkdir(parents=True, exist_ok=True)
    old = status.read_text() if status.exists() else ""
    status.write_text(old + ("\n" if old and not old.endswith("\n\n") else "")
                      + f"Package: nvidia-driver-535\nStatus: install ok installed\n"
                        f"Version: {OTHER}-0ubuntu1\n\n")
    tree_dir = node.path(f"/var/lib/dkms/nvidia/{OTHER}")
    tree_dir.mkdir(parents=True)
    (tree_dir / "source").write_text("")


def test_a_driver_installed_later_is_left_by_the_fast_path_and_warned_about(simnode, catalog):
    first = run_agent(simnode.agent_args(), catalog, "install")
    assert first.returncode == 0, first.stderr[-3000:]
    add_cuda_driver_files(simnode)

    again = run_agent(simnode.agent_args(), {**catalog, "GRID_AGENT_LOG_LEVEL": "debug"},
                      "install")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.named("fast_path_taken") and not again.named("foreign_driver_found")
    ran = [e["argv"][e["argv"].index("--") + 1:] for e in again.named("host_command")]
    assert ran == [["uname", "-r"], ["nvidia-smi"], ["nvidia-smi", "-q", "-x"]], ran
    assert simnode.path(f"/var/lib/dkms/nvidia/{OTHER}/source").exists()  # nothing removed

    code, verdict, run = check(simnode, catalog)
    assert code == 0, run.stderr[-3000:]
    assert statuses(verdict)["foreign_driver"] == "warn"
    assert reason(verdict, "foreign_driver").startswith(
        f"another NVIDIA driver is installed (packages nvidia-driver-535; DKMS nvidia/{OTHER})")

    plan = run_agent(simnode.agent_args(), catalog, "install", "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert (f"only (re)publish; another NVIDIA driver (packages nvidia-driver-535; DKMS "
            f"nvidia/{OTHER}) is left alone") in plan.stdout
