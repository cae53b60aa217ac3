"""`grid-agent detect` with the real pyudev/libudev, against umockdev PCI descriptions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.pci_config import config_space, host_record

pytestmark = pytest.mark.umockdev
DEVICES = Path(__file__).parent / "devices"


def detect(device_file=None, *extra_env):
    argv = [sys.executable, "-m", "agent", "--log-format", "json", "detect", "--json"]
    if device_file:
        argv = ["umockdev-run", "-d", str(DEVICES / device_file), "--", *argv]
    env = {"PATH": "/usr/bin:/bin", **dict(extra_env)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def slots(devices):
    return [(d["slot"], d["pci_id"], d["subsystem_id"], d["driver"]) for d in devices]


def test_runs_inside_umockdev():
    proc = subprocess.run(
        ["umockdev-run", "-d", str(DEVICES / "target.umockdev"), "--", "sh", "-c",
         "echo $LD_PRELOAD"], capture_output=True, text=True, check=True)
    assert "libumockdev-preload" in proc.stdout


def test_target_alone():
    code, out, _ = detect("target.umockdev")
    assert code == 0 and out["target_node"] is True
    assert slots(out["targets"]) == [("0000:00:02.0", "10de:2bb5", "1414:2187", None)]
    assert out["targets"][0]["pci_class"] == "0x030200"


def test_two_targets():
    code, out, _ = detect("two-targets.umockdev")
    assert code == 0
    assert [d["slot"] for d in out["targets"]] == ["0000:00:02.0", "0000:00:03.0"]


@pytest.mark.parametrize(("device_file", "driver"), [
    ("target-nvidia.umockdev", "nvidia"),
    ("target-nouveau.umockdev", "nouveau"),
])
def test_bound_driver_is_reported(device_file, driver):
    code, out, _ = detect(device_file)
    assert code == 0 and out["targets"][0]["driver"] == driver


def test_h100_is_not_a_target():
    code, out, err = detect("h100.umockdev")
    assert code == 3 and out["targets"] == []
    assert slots(out["nvidia"]) == [("0001:00:00.0", "10de:2330", "10de:16c1", "nvidia")]
    failed = [json.loads(ln) for ln in err.splitlines() if '"command_failed"' in ln]
    assert failed[0]["exit_code"] == 3 and "none a target" in failed[0]["error"]


def test_no_nvidia_device():
    code, out, _ = detect("no-nvidia.umockdev")
    assert code == 3 and (out["target_node"], out["targets"], out["nvidia"]) == (False, [], [])


def test_subsystem_filter_from_the_environment():
    code, out, _ = detect("target.umockdev", ("GRID_AGENT_TARGET_SUBSYSTEMS", "1414:9999"))
    assert code == 3 and out["nvidia"] and not out["targets"]


def test_this_machine_real_bus_has_no_target():
    code, out, _ = detect()
    assert code == 3 and out["target_node"] is False


# Config space is binary: umockdev's `H:` lines carry it hex-encoded; libudev would cut it at
# the first NUL, so the agent reads the sysfs file itself (under umockdev-run, the testbed's).
def detect_host(device_file):
    return detect(device_file, ("GRID_AGENT_NSENTER", "false"))


def test_host_vgpu_manager_from_config_space():
    code, out, _ = detect_host("target-vgpu20.umockdev")
    assert code == 0
    assert out["host_vgpu"] == {"version": "595.58.02", "branch": "R595",
                                "slot": "0000:00:02.0", "vgpu_release": 20}
    assert out["pin"]["version"] == "580.105.08-grid-azure"
    assert out["pin"]["vs_host"] == "behind"


def test_a_host_too_old_for_the_pin():
    code, out, _ = detect_host("target-vgpu18.umockdev")
    assert code == 0 and out["host_vgpu"]["vgpu_release"] == 18
    assert out["pin"]["vs_host"] == "refuse"
    assert "the guest is newer than the host" in out["pin"]["reason"]


@pytest.mark.parametrize(("device_file", "why"), [
    ("target-passthrough.umockdev", "0000:00:02.0: no vGPU capability in its config space"),
    ("target.umockdev", "0000:00:02.0: No such file or directory"),
])
def test_unknown_host_version_is_a_fact_not_a_failure(device_file, why):
    code, out, _ = detect_host(device_file)
    assert code == 0 and out["host_vgpu"] is None
    assert out["host_vgpu_unknown"] == why and out["pin"]["vs_host"] == "unknown"


def test_detect_text_names_the_host_branch():
    argv = ["umockdev-run", "-d", str(DEVICES / "target-vgpu20.umockdev"), "--",
            sys.executable, "-m", "agent", "--no-nsenter", "detect"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0
    assert "host vGPU manager 595.58.02 (branch R595, vGPU 20) on 0000:00:02.0; pin: " \
           "guest driver 580.105.08-grid-azure (vGPU 19)" in proc.stdout


@pytest.mark.parametrize(("device_file", "config"), [
    ("target-vgpu20.umockdev", config_space()),
    ("target-vgpu18.umockdev", config_space(records=host_record("570.195.02", "R570"))),
    ("target-passthrough.umockdev", config_space(vgpu=False)),
])
def test_fixtures_are_the_layout_builders_bytes(device_file, config):
    lines = (DEVICES / device_file).read_text().splitlines()
    assert f"H: config={config.hex().upper()}" in lines
