"""Another NVIDIA driver already on the node (issue 13, item 7): scenario foreign-cuda-driver.

A CUDA driver from apt (nvidia-driver-535 and friends, DKMS nvidia/535.183.01 built into
updates/dkms, its own nvidia-smi, its modules loaded) next to the container toolkit. With
scenario `dkms` too, the node's dkms stub registered and built it (a real kbuild), and
the agent's `dkms remove` runs against that stub.
"""

import json

import pytest

from tests.e2e.healthrun import check, statuses
from tests.e2e.installrun import MARKER, host_text, record, run_agent

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

OTHER = "535.183.01"
OURS = "580.105.08"


def install(simnode, env):
    return run_agent(simnode.agent_args(), env, "install")


def test_an_unused_cuda_driver_is_removed_the_way_aks_does_then_grid_installs(simnode, catalog):
    simnode.set_scenarios("foreign-cuda-driver")
    rel = simnode.kernel_release
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == OTHER
    assert simnode.path(f"/lib/modules/{rel}/updates/dkms/nvidia.ko").exists()
    result = install(simnode, catalog)
    assert result.returncode == 0, result.error() or result.stderr[-3000:]
    found, = result.named("foreign_driver_found")
    assert "nvidia-driver-535" in found["driver"] and f"DKMS nvidia/{OTHER}" in found["driver"]
    assert result.named("foreign_driver_removed")
    status = host_text(simnode, "/var/lib/dpkg/status")
    assert "Package: nvidia-driver-535\n" not in status
    assert "Package: libnvidia-compute-535\n" not in status
    assert "Package: nvidia-container-toolkit\n" in status  # not a driver: kept
    for gone in (f"/var/lib/dkms/nvidia/{OTHER}", f"/usr/src/nvidia-{OTHER}",
                 f"/lib/modules/{rel}/updates/dkms/nvidia.ko"):
        assert not simnode.path(gone).exists(), gone
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == "580.105.08"
    assert simnode.exec(["nvidia-smi"]).returncode == 0  # ours, not the 535 one
    assert host_text(simnode, MARKER) is not None
    assert record(simnode)["outcome"] == "installed"


def test_a_cuda_driver_in_use_is_exit_6_naming_it_and_left_alone(simnode, catalog):
    simnode.set_scenarios("foreign-cuda-driver", "module-in-use")
    result = install(simnode, catalog)
    assert result.returncode == 6, result.stderr[-3000:]
    error = result.error()
    assert "another NVIDIA driver is installed" in error and "nvidia-driver-535" in error
    assert "cuda-app" in error
    assert "Package: nvidia-driver-535\n" in host_text(simnode, "/var/lib/dpkg/status")
    assert simnode.path(f"/var/lib/dkms/nvidia/{OTHER}").exists()
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == OTHER
    rec = record(simnode)
    assert (rec["outcome"], rec["exit_code"]) == ("failed", 6)


def dkms_status(simnode):
    return simnode.exec(["dkms", "status"]).stdout.splitlines()


def dkms_runs(simnode):
    """The node's dkms calls, in order (the rig's log: argv and exit code)."""
    text = host_text(simnode, "/var/lib/grid-sim/dkms-runs.jsonl") or ""
    return [json.loads(line) for line in text.splitlines()]


def foreign_kos(simnode):
    folder = simnode.path(f"/lib/modules/{simnode.kernel_release}/updates/dkms")
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_with_dkms_the_agent_dkms_removes_it_then_grid_registers_alone(simnode, catalog):
    simnode.set_scenarios("foreign-cuda-driver", "dkms")
    rel = simnode.kernel_release
    assert dkms_status(simnode) == [f"nvidia/{OTHER}, {rel}, x86_64: installed"]
    assert foreign_kos(simnode) == ["nvidia-modeset.ko", "nvidia-uvm.ko", "nvidia.ko"]
    result = install(simnode, catalog)
    assert result.returncode == 0, result.error() or result.stderr[-3000:]
    assert result.named("foreign_driver_removed")
    runs = [(r["argv"], r["exit"]) for r in dkms_runs(simnode)]
    removal = (["remove", f"nvidia/{OTHER}", "--all"], 0)
    # The agent's own `dkms remove`, while the package's source is still there: it
    # uninstalls (the stub's depmod; a failed one would be exit 6) and unregisters, so
    # nvidia-dkms-535's prerm finds nothing left to remove.
    assert removal in runs, runs
    later = runs[runs.index(removal) + 1:]
    assert not [r for r in later if r[0][0] == "remove"], runs
    assert "Package: nvidia-dkms-535\n" not in host_text(simnode, "/var/lib/dpkg/status")
    assert not simnode.path(f"/var/lib/dkms/nvidia/{OTHER}").exists()
    assert not simnode.path(f"/usr/src/nvidia-{OTHER}").exists()
    # GRID went in through DKMS too (dkms is on PATH now): its modules alone in updates/dkms.
    assert "--dkms" in result.named("installer_started")[0]["argv"]
    assert dkms_status(simnode) == [f"nvidia/{OURS}, {rel}, x86_64: installed"]
    ko = simnode.path(f"/lib/modules/{rel}/updates/dkms/nvidia.ko").read_bytes()
    assert f"version={OURS}".encode() in ko and f"version={OTHER}".encode() not in ko
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == OURS
    assert record(simnode)["outcome"] == "installed"
    _, verdict, run = check(simnode, catalog)
    assert verdict is not None, run.stderr[-3000:]
    assert statuses(verdict)["foreign_driver"] == "ok", verdict


def test_with_dkms_a_cuda_driver_in_use_is_exit_6_and_stays_registered(simnode, catalog):
    simnode.set_scenarios("foreign-cuda-driver", "dkms", "module-in-use")
    rel = simnode.kernel_release
    result = install(simnode, catalog)
    assert result.returncode == 6, result.stderr[-3000:]
    assert "another NVIDIA driver is installed" in result.error()
    assert not [r for r in dkms_runs(simnode) if r["argv"][0] == "remove"]
    assert dkms_status(simnode) == [f"nvidia/{OTHER}, {rel}, x86_64: installed"]
    assert foreign_kos(simnode) == ["nvidia-modeset.ko", "nvidia-uvm.ko", "nvidia.ko"]
    assert "Package: nvidia-dkms-535\n" in host_text(simnode, "/var/lib/dpkg/status")
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == OTHER
