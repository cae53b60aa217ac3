"""`grid-agent detect` with the real pyudev/libudev, against umockdev PCI descriptions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert code == 3 and out == {"target_node": False, "targets": [], "nvidia": []}


def test_subsystem_filter_from_the_environment():
    code, out, _ = detect("target.umockdev", ("GRID_AGENT_TARGET_SUBSYSTEMS", "1414:9999"))
    assert code == 3 and out["nvidia"] and not out["targets"]


def test_this_machine_real_bus_has_no_target():
    code, out, _ = detect()
    assert code == 3 and out["target_node"] is False
