"""Another NVIDIA driver already on the node (issue 13, item 7): scenario foreign-cuda-driver.

A CUDA driver from apt (nvidia-driver-535 and friends, DKMS nvidia/535.183.01 built into
updates/dkms, its own nvidia-smi, its modules loaded) next to the container toolkit.
"""

import pytest

from tests.e2e.installrun import MARKER, host_text, record, run_agent

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

OTHER = "535.183.01"


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
