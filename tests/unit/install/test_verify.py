import pytest

from agent.driver.checks import Expect
from agent.driver.snapshot import take_snapshot
from agent.errors import VerifyError
from agent.host.paths import SMI as SMI_PATH
from agent.host.root import HostRoot
from agent.install.verify import verify_snapshot
from tests.fakes.runner import smi_runner

XML = """<?xml version="1.0" ?>
<nvidia_smi_log>
  <driver_version>{version}</driver_version>
  <cuda_version>13.0</cuda_version>
  <attached_gpus>1</attached_gpus>
  <gpu id="00000000:00:02.0">
    <product_name>NVIDIA RTX Pro 6000 Blackwell DC-4-96Q</product_name>
    <mig_mode><current_mig>N/A</current_mig><pending_mig>N/A</pending_mig></mig_mode>
    <gpu_virtualization_mode><virtualization_mode>VGPU</virtualization_mode>
      <host_vgpu_mode>N/A</host_vgpu_mode></gpu_virtualization_mode>
    <vgpu_software_licensed_product>
      <licensed_product_name>NVIDIA RTX Virtual Workstation</licensed_product_name>
      <license_status>Licensed (Expiry: 2026-7-7 16:1:44 GMT)</license_status>
    </vgpu_software_licensed_product>
    <pci><pci_device_id>2BB510DE</pci_device_id><pci_sub_system_id>21871414</pci_sub_system_id>
    </pci>
  </gpu>
</nvidia_smi_log>
"""
PROPRIETARY = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Wed Oct 29 2025\n"
OPEN = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {v}  Release Build  (dvs)\n"


def smi_host(*, rc=0, version="580.105.08"):
    """The host's nvidia-smi: the table (exit code per test) and the XML."""
    return smi_runner(plain_code=rc, plain_out="| NVIDIA-SMI 580.105.08 |\n",
                      xml_out=XML.format(version=version))


@pytest.fixture
def root(tmp_path):
    r = HostRoot(tmp_path)
    smi = r.path(SMI_PATH)
    smi.parent.mkdir(parents=True)
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    load(r)
    return r


def load(root, version="580.105.08", flavour=PROPRIETARY):
    mod = root.path("/sys/module/nvidia")
    mod.mkdir(parents=True, exist_ok=True)
    (mod / "version").write_text(version + "\n")
    (mod / "refcnt").write_text("0\n")
    (mod / "holders").mkdir(exist_ok=True)
    drv = root.path("/proc/driver/nvidia")
    drv.mkdir(parents=True, exist_ok=True)
    (drv / "version").write_text(flavour.format(v=version))


def verify(root, runner, module_type="proprietary", targets=("0000:00:02.0",)):
    """Verify as install does: the driver checks on a fresh snapshot."""
    snap = take_snapshot(root, runner, handoff=False)
    return verify_snapshot(snap, Expect("580.105.08", module_type, targets))


def test_healthy_driver_verifies(root):
    runner = smi_host()
    result = verify(root, runner)
    assert result.report.driver_version == "580.105.08"
    assert len(result.report.gpus) == 1
    assert "580.105.08 (proprietary modules), 1 GPU(s)" in result.summary()
    assert next(a for a in runner.calls if a[0] == "nvidia-smi") == ["nvidia-smi"]


def test_smi_exit_14_fails_like_the_validator(root):
    with pytest.raises(VerifyError, match="nvidia-smi exited 14") as err:
        verify(root, smi_host(rc=14))
    assert err.value.exit_code == 7


@pytest.mark.parametrize("problem", ["missing", "empty", "not-executable"])
def test_smi_binary_must_be_a_non_empty_executable(root, problem):
    smi = root.path(SMI_PATH)
    if problem == "missing":
        smi.unlink()
    elif problem == "empty":
        smi.write_text("")
    else:
        smi.chmod(0o644)
    with pytest.raises(VerifyError, match="/usr/bin/nvidia-smi"):
        verify(root, smi_host())


def test_wrong_loaded_version(root):
    load(root, version="570.86.16")
    with pytest.raises(VerifyError, match=r"loaded nvidia module is 570\.86\.16"):
        verify(root, smi_host())


def test_wrong_module_type(root):
    load(root, flavour=OPEN)
    with pytest.raises(VerifyError, match="open module is loaded but proprietary was installed"):
        verify(root, smi_host())
    assert verify(root, smi_host(), module_type="open").module_type == "open"


def test_not_loaded(tmp_path):
    with pytest.raises(VerifyError, match="not loaded"):
        verify(HostRoot(tmp_path), smi_host())


def test_smi_reporting_another_version(root):
    with pytest.raises(VerifyError, match=r"reports driver 580\.1,"):
        verify(root, smi_host(version="580.1"))


def test_a_target_gpu_nvidia_smi_does_not_list_fails(root):
    with pytest.raises(VerifyError, match=r"target GPU\(s\) 0000:00:03.0 not listed"):
        verify(root, smi_host(), targets=("0000:00:03.0",))


def test_the_first_failure_is_raised_in_check_order(tmp_path):
    # Not loaded and no nvidia-smi at all: the module is named first, as watch orders it.
    with pytest.raises(VerifyError) as err:
        verify(HostRoot(tmp_path), smi_host(rc=127))
    assert err.value.message == "the nvidia kernel module is not loaded"
