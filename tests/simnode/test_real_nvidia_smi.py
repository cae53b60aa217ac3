"""NVIDIA's real nvidia-smi (Debian non-free, 535.261.03) inside the simulated host.

No driver is loaded in the node (and none exists on this machine): the real binary and
its real libnvidia-ml give their real answers, and the agent's parser must read exactly
those. It runs only inside the node, whose /dev is `nodev`: no device file it makes can
reach a kernel driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from agent.driver.nvsmi import NvsmiParseError, parse_report, run_smi
from agent.host.runner import HostRunner
from tests.fakes.smi import fixture
from tests.simnode import realparts

SMI_PACKAGES = ("nvidia-smi", "libnvidia-ml1")
pytestmark = [
    pytest.mark.simnode,
    pytest.mark.skipif(bool(realparts.missing(*SMI_PACKAGES)),
                       reason=f"Debian non-free packages {realparts.missing(*SMI_PACKAGES)} not in "
                              f"{realparts.DEBS}: run scripts/setup"),
]

NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.")


@dataclass
class NoMknodRunner(HostRunner):
    """The agent's own nsenter runner, with CAP_MKNOD dropped for what it starts."""

    def argv_for(self, argv):
        return super().argv_for([*realparts.NO_MKNOD, *argv])


def test_without_libnvidia_ml_it_says_so_and_exits_12(simnode):
    realparts.put_real_smi(simnode, with_nvml=False)
    out = simnode.exec(["nvidia-smi"], check=False)
    assert out.returncode == 12
    assert out.stdout.startswith("NVIDIA-SMI couldn't find libnvidia-ml.so library in your "
                                 "system.")
    outcome = run_smi(HostRunner(pid=simnode.pid))
    assert outcome.report is None and outcome.exit_code == 12
    assert outcome.reason.startswith("nvidia-smi exited 12: NVIDIA-SMI couldn't find "
                                     "libnvidia-ml.so")


def test_with_no_driver_loaded_the_real_prose_and_exit_9_are_a_reason(simnode):
    realparts.put_real_smi(simnode)
    out = simnode.exec([*realparts.NO_MKNOD, "nvidia-smi", "-q", "-x"], check=False)
    assert (out.returncode, out.stdout) == (9, NO_DRIVER + "\n\n")
    assert out.stdout == fixture("prose-no-driver.txt")  # the unit fixture is the real text
    with pytest.raises(NvsmiParseError, match="no XML report: NVIDIA-SMI has failed"):
        parse_report(out.stdout)
    outcome = run_smi(NoMknodRunner(pid=simnode.pid))
    assert (outcome.exit_code, outcome.report) == (9, None)
    assert outcome.reason == f"nvidia-smi exited 9: {NO_DRIVER}"
    assert outcome.xml_reason.startswith("nvidia-smi -q -x (exit 9): no XML report: NVIDIA-SMI")
    assert not simnode.path("/dev/nvidiactl").exists()


def test_an_unopenable_device_file_is_insufficient_permissions_exit_4(simnode):
    # With CAP_MKNOD the real libnvidia-ml makes /dev/nvidiactl (195:255) itself; the
    # node's nodev /dev refuses to open it: the answer a node gives when the device
    # files exist but cannot be opened.
    realparts.put_real_smi(simnode)
    outcome = run_smi(HostRunner(pid=simnode.pid))
    assert (outcome.exit_code, outcome.report) == (4, None)
    assert outcome.reason == "nvidia-smi exited 4: Failed to initialize NVML: Insufficient " \
                             "Permissions"
    ctl = simnode.path("/dev/nvidiactl")
    assert ctl.is_char_device() and os.major(ctl.stat().st_rdev) == 195
