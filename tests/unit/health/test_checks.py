"""Every check against a fake node on disk: healthy, and each way a node goes wrong."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent.health.checks import driver_healthy
from agent.health.verdict import DEGRADED, HEALTHY, NOT_APPLICABLE, UNHEALTHY
from agent.host.root import HostRoot
from tests.fakes.clock import FakeClock
from tests.fakes.foreign import KERNEL, cuda_driver
from tests.fakes.pci import H100, TARGET
from tests.fakes.pci_config import config_space, host_record
from tests.fakes.smi import fixture
from tests.fakes.watch import NVRM, FakeHost, health, healthy_node, put, reboot_without_driver


@pytest.fixture
def node(tmp_path):
    healthy_node(tmp_path)
    return tmp_path, FakeHost(tmp_path)


def verdict_of(node, **cfg):
    root, host = node
    return health(root, host, **cfg).check_once()


def status(verdict, name):
    check = verdict.check(name)
    return check.status, check.reason


def test_healthy_node(node):
    verdict = verdict_of(node)
    assert verdict.state == HEALTHY, verdict.reason()
    assert {c.name: c.status for c in verdict.checks} == {
        "driver_loaded": "ok", "module_type": "ok", "nvidia_smi": "ok", "gpus": "ok",
        "virtualization": "ok", "profile": "ok", "license": "ok", "mig": "ok", "gridd": "ok",
        "persistence": "ok", "graphics": "ok", "kernel": "skip", "prebuild": "ok",
        "foreign_driver": "ok", "host_branch": "skip", "handoff": "ok"}
    assert driver_healthy(verdict.checks)
    assert verdict.facts["driver_version"] == "580.105.08"
    gpu = verdict.facts["gpus"][0]
    assert (gpu["profile"], gpu["license_state"]) == ("DC-4-96Q", "licensed")
    assert gpu["license_expiry"] == datetime(2026, 7, 7, 16, 1, 44, tzinfo=UTC).timestamp()
    assert verdict.facts["install"]["outcome"] == "installed"


def test_not_a_target_node_runs_nothing(node):
    root, host = node
    verdict = health(root, host, devices=(H100,)).check_once()
    assert verdict.state == NOT_APPLICABLE and verdict.ready
    assert host.calls == []


def test_module_not_loaded(node):
    root, host = node
    reboot_without_driver(root)
    host.smi_code, host.smi_out = 9, fixture("prose-no-driver.txt")
    host.xml = fixture("prose-no-driver.txt")
    verdict = health(root, host).check_once()
    assert verdict.state == UNHEALTHY
    assert status(verdict, "driver_loaded") == ("fail", "the nvidia kernel module is not loaded")
    assert status(verdict, "nvidia_smi")[1].startswith("nvidia-smi exited 9: NVIDIA-SMI has failed")
    assert status(verdict, "gpus")[1].startswith(
        "no nvidia-smi -q -x report: nvidia-smi -q -x (exit 0): no XML report: NVIDIA-SMI has")
    assert status(verdict, "license")[0] == "skip"
    assert not driver_healthy(verdict.checks)


def test_old_driver_loaded(node):
    root, host = node
    put(root, "/sys/module/nvidia/version", "550.144.06\n")
    host.xml = fixture("healthy-v12.xml")
    verdict = verdict_of(node)
    assert status(verdict, "driver_loaded") == (
        "fail", "loaded nvidia module is 550.144.06, expected 580.105.08")
    assert status(verdict, "gpus") == (
        "fail", "nvidia-smi reports driver 550.144.06, expected 580.105.08")


def test_module_type_differs_from_the_record(node):
    root, _ = node
    put(root, "/proc/driver/nvidia/version", NVRM.replace(
        "x86_64 Kernel Module", "Open Kernel Module for x86_64"))
    assert status(verdict_of(node), "module_type") == (
        "fail", "the open module is loaded but proprietary was installed")


def test_module_type_without_record_is_skipped(node):
    root, _ = node
    (root / "var/lib/grid-agent/state.json").unlink()
    assert status(verdict_of(node), "module_type") == ("skip", "no install record to compare with")


def test_smi_exit_14(node):
    _, host = node
    host.smi_code, host.smi_out = 14, "WARNING: infoROM is corrupted at gpu 00000000:00:02.0\n"
    verdict = verdict_of(node)
    assert verdict.state == UNHEALTHY
    assert status(verdict, "nvidia_smi") == (
        "fail", "nvidia-smi exited 14: WARNING: infoROM is corrupted at gpu 00000000:00:02.0")
    assert status(verdict, "gpus")[0] == "ok"


def test_broken_xml_is_a_reason(node):
    _, host = node
    host.xml = fixture("truncated.xml")
    reason = status(verdict_of(node), "gpus")
    assert reason[0] == "fail" and "malformed XML report" in reason[1]


def test_a_target_gpu_missing_from_the_report(node):
    root, host = node
    other = replace(TARGET, slot="0000:00:04.0")
    verdict = health(root, host, devices=(TARGET, other)).check_once()
    assert status(verdict, "gpus") == (
        "fail", "target GPU(s) 0000:00:04.0 not listed by nvidia-smi")


def test_pass_through(node):
    _, host = node
    host.xml = fixture("passthrough.xml")
    verdict = verdict_of(node)
    assert status(verdict, "virtualization") == (
        "fail", "virtualization mode Pass-Through, not VGPU")
    assert status(verdict, "license") == ("fail", "not licensed (N/A)")


def test_wrong_profile(node):
    _, host = node
    host.xml = fixture("wrong-profile.xml")
    assert verdict_of(node).check("profile").status == "ok"  # DC-2-48C is still a DC profile
    reason = status(verdict_of(node, expected_profile="DC-4-96Q"), "profile")
    assert reason == ("fail", "profile 'NVIDIA RTX Pro 6000 Blackwell DC-2-48C', "
                              "expected DC-4-96Q")
    assert verdict_of(node).check("graphics").status == "skip"  # C-series: no graphics check


def test_time_sliced_profile_has_no_mig(node):
    _, host = node
    host.xml = fixture("mig-na.xml").replace("DC-4-96Q", "DC-3Q")
    verdict = verdict_of(node)
    assert status(verdict, "mig") == ("ok", "MIG enabled")
    assert verdict.check("mig").details["gpus"] == {
        "00000000:00:02.0": "time-sliced vGPU type DC-3Q: no MIG"}
    assert status(verdict, "profile")[0] == "ok" and verdict.facts["gpus"][0]["vgpu_series"] == "Q"


@pytest.mark.parametrize("name", ["unlicensed.xml", "unlicensed-restricted.xml",
                                  "unlicensed-unrestricted.xml", "license-unknown.xml",
                                  "license-na.xml"])
def test_every_unlicensed_form_fails(node, name):
    _, host = node
    host.xml = fixture(name)
    verdict = verdict_of(node)
    assert verdict.state == UNHEALTHY
    assert status(verdict, "license")[0] == "fail"
    assert status(verdict, "license")[1].startswith("not licensed (")


# The fixtures' lease ends 2026-7-7 16:1:44 GMT; real guests hold hours-long leases.
EXPIRY = datetime(2026, 7, 7, 16, 1, 44, tzinfo=UTC)


@pytest.mark.parametrize(("left", "reason"), [
    (timedelta(hours=20), "licensed, lease ends in 20.0 h"),
    (timedelta(hours=48), "licensed, lease ends in 48.0 h"),
    (timedelta(days=30), "licensed, lease ends in 720.0 h"),
])
def test_real_short_leases_are_healthy(node, left, reason):
    verdict = verdict_of(node, now=EXPIRY - left)
    assert verdict.state == HEALTHY, verdict.reason()
    assert status(verdict, "license") == ("ok", "licensed")
    assert verdict.check("license").details["gpus"] == {"00000000:00:02.0": reason}


def test_a_lease_about_to_lapse_warns(node):
    verdict = verdict_of(node, now=EXPIRY - timedelta(hours=3))
    assert verdict.state == DEGRADED and verdict.ready
    assert status(verdict, "license") == (
        "warn", "licence lease ends in 3.0 h, under the 4.0 h minimum: renewals are not landing")
    assert status(verdict_of(node, now=EXPIRY - timedelta(hours=3),
                             license_min_remaining=3600.0), "license")[0] == "ok"


def test_an_expired_lease_fails(node):
    verdict = verdict_of(node, now=datetime(2026, 7, 8, 16, 1, 44, tzinfo=UTC))
    assert verdict.state == UNHEALTHY and not verdict.ready
    assert status(verdict, "license") == (
        "fail", "licence lease expired at 2026-07-07T16:01:44+00:00 (24.0 h ago)")


def test_a_lease_that_does_not_advance_warns_in_the_watch_loop(node):
    root, host = node
    clock = FakeClock.at(EXPIRY - timedelta(hours=20))
    watch = health(root, host, clock=clock)  # one Health: its lease memory spans the cycles
    assert status(watch.check_once(), "license")[0] == "ok"
    clock.advance(8 * 3600)  # 12 h left: a renewal was due, the expiry is where it was
    assert status(watch.check_once(), "license")[0] == "ok"
    clock.advance(3 * 3600)  # 9 h left, 11 h without a renewal: more than half the lease
    verdict = watch.check_once()
    assert verdict.state == DEGRADED
    assert status(verdict, "license") == (
        "warn", "licence lease not renewed: expiry 2026-07-07T16:01:44+00:00 unchanged for "
                "11.0 h, 9.0 h left")
    host.xml = host.xml.replace("2026-7-7 16:1:44", "2026-7-8 14:0:0")  # renewed at last
    renewed = watch.check_once().check("license")
    assert (renewed.status, renewed.details["gpus"]) == (
        "ok", {"00000000:00:02.0": "licensed, lease ends in 31.0 h"})


def test_a_one_shot_check_has_no_lease_memory(node):
    root, host = node
    clock = FakeClock.at(EXPIRY - timedelta(hours=9))
    assert status(health(root, host, clock=clock).check_once(), "license")[0] == "ok"


@pytest.mark.parametrize("name", ["licensed-permanent.xml", "licensed-expiry-na.xml"])
def test_licence_without_expiry_is_ok(node, name):
    _, host = node
    host.xml = fixture(name)
    assert status(verdict_of(node), "license")[0] == "ok"


def test_mig_disabled_by_policy(node):
    _, host = node
    host.xml = fixture("mig-disabled.xml")
    warn = verdict_of(node)
    assert warn.state == DEGRADED
    assert status(warn, "mig") == (
        "warn", "MIG mode Disabled, expected Enabled (mig.strategy=single)")
    assert status(verdict_of(node, mig_policy="fail"), "mig")[0] == "fail"


def test_mig_pending_change(node):
    _, host = node
    host.xml = fixture("healthy-v13.xml").replace(
        "<pending_mig>Enabled", "<pending_mig>Disabled")
    assert status(verdict_of(node), "mig") == (
        "warn", "MIG mode Enabled, Disabled pending a GPU reset")


def test_gridd_inactive_and_missing(node):
    root, host = node
    host.units["nvidia-gridd"] = "failed"
    assert status(verdict_of(node), "gridd") == ("fail", "nvidia-gridd is failed")
    (root / "lib/systemd/system/nvidia-gridd.service").unlink()
    host.units["nvidia-gridd"] = "inactive"
    assert "nvidia-gridd.service is not installed" in status(verdict_of(node), "gridd")[1]


def test_persistence(node):
    _, host = node
    host.xml = fixture("persistence-disabled.xml")
    assert status(verdict_of(node), "persistence") == ("ok", "nvidia-persistenced active")
    host.units["nvidia-persistenced"] = "inactive"
    assert status(verdict_of(node), "persistence") == (
        "warn", "persistence mode not enabled and nvidia-persistenced is inactive")


def test_graphics_missing_for_q_profile(node):
    root, _ = node
    (root / "usr/share/vulkan/icd.d/nvidia_icd.json").unlink()
    put(root, "/etc/vulkan/icd.d/nvidia_icd.json", "{}")
    assert verdict_of(node).check("graphics").status == "ok"
    (root / "etc/vulkan/icd.d/nvidia_icd.json").unlink()
    (root / "usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0").unlink()
    verdict = verdict_of(node)
    assert verdict.state == DEGRADED
    assert status(verdict, "graphics")[1].startswith(
        "missing on the host: Vulkan ICD nvidia_icd.json, libGLX_nvidia.so.0")


def test_handoff_missing(tmp_path):
    healthy_node(tmp_path, published=False)
    verdict = health(tmp_path, FakeHost(tmp_path)).check_once()
    assert status(verdict, "handoff") == (
        "fail", "marker /run/nvidia/validations/.driver-ctr-ready missing; "
                "/run/nvidia/driver is not a mount of host /")
    assert driver_healthy(verdict.checks)


def test_two_gpus_one_unlicensed(node):
    root, host = node
    host.xml = fixture("two-gpus.xml")
    verdict = health(root, host, devices=(TARGET, replace(TARGET, slot="0000:00:03.0"))
                     ).check_once()
    assert status(verdict, "gpus")[0] == "ok"
    assert status(verdict, "license") == (
        "fail", "00000000:00:03.0: not licensed (Unlicensed (Restricted))")


def test_nvidia_smi_not_installed(node):
    _, host = node
    host.smi_code, host.smi_out = 127, "nsenter: failed to execute nvidia-smi: No such file\n"
    host.xml = host.smi_out
    verdict = verdict_of(node)
    assert status(verdict, "nvidia_smi") == (
        "fail", "nvidia-smi is not installed on the host (exit 127)")
    assert status(verdict, "gpus") == ("fail", "no nvidia-smi -q -x report: nvidia-smi is not "
                                               "installed")


@pytest.mark.parametrize(("release", "want"), [
    ("6.8.0-1021-azure", ("ok", "kernel 6.8.0-1021-azure is not a known-bad one")),
    ("6.11.0-1018-azure", ("warn", "kernel 6.11.0-1018-azure: GRID driver installation is "
                           "reported failing on Azure kernel 6.11; downgrade the kernel to 6.8 "
                           "(e.g. Ubuntu's linux-azure 6.8)")),
])
def test_known_bad_kernel_warns(node, release, want):
    root, _ = node
    put(root, "/proc/sys/kernel/osrelease", release + "\n")
    verdict = verdict_of(node)
    assert status(verdict, "kernel") == want
    assert verdict.facts["kernel_release"] == release
    assert verdict.ready


def put_vgpu(root, config: bytes) -> None:
    put(root, "/sys/bus/pci/devices/0000:00:02.0/vendor", "0x10de\n")
    (root / "sys/bus/pci/devices/0000:00:02.0/config").write_bytes(config)


def test_host_branch_from_config_space(node):
    root, _ = node
    verdict = verdict_of(node)
    assert status(verdict, "host_branch")[0] == "skip"  # no sysfs config: unknown, a fact
    assert verdict.facts["host_vgpu"] is None
    assert verdict.facts["host_vgpu_unknown"].startswith("cannot list /sys/bus/pci/devices")
    put_vgpu(root, config_space())  # host vGPU manager 595 (vGPU 20); the driver is 580
    verdict = verdict_of(node)
    assert status(verdict, "host_branch") == (
        "warn", "guest driver 580.105.08 (vGPU 19), host vGPU manager 595.58.02 (vGPU 20): "
                "one branch behind, supported until the host moves again")
    assert verdict.facts["host_vgpu"] == {"version": "595.58.02", "branch": "R595",
                                          "slot": "0000:00:02.0", "vgpu_release": 20}
    assert verdict.ready
    put_vgpu(root, config_space(records=host_record("580.105.06", "R580")))
    assert status(verdict_of(node), "host_branch")[0] == "ok"
    put_vgpu(root, config_space(records=host_record("610.10", "R610")))
    assert status(verdict_of(node), "host_branch")[0] == "skip"


def test_a_failed_prebuild_warns_and_a_built_one_is_named(node):
    root, _host = node
    state = root / "var/lib/grid-agent/state.json"
    data = json.loads(state.read_text())
    data["prebuilds"] = {"6.8.0-1020-azure": {"outcome": "built", "error": ""}}
    state.write_text(json.dumps(data))
    assert status(verdict_of(node), "prebuild") == ("ok", "driver prebuilt for 6.8.0-1020-azure")
    data["prebuilds"]["6.8.0-1021-azure"] = {"outcome": "failed", "error": "gcc-13: not found"}
    state.write_text(json.dumps(data))
    verdict = verdict_of(node)
    state_, reason = status(verdict, "prebuild")
    assert state_ == "warn" and "6.8.0-1021-azure failed: gcc-13: not found" in reason
    assert verdict.ready  # a warning: the running driver is fine


def test_another_nvidia_driver_warns_and_stays(node):
    root, host = node
    assert status(verdict_of(node), "foreign_driver") == ("ok", "no other NVIDIA driver installed")
    processes = len(host.calls)
    hr = cuda_driver(HostRoot(root), KERNEL)
    verdict = verdict_of(node)
    assert len(host.calls) == 2 * processes  # found by files: no host process more
    assert verdict.state == DEGRADED and verdict.ready
    state_, reason = status(verdict, "foreign_driver")
    assert state_ == "warn"
    assert reason.startswith("another NVIDIA driver is installed (packages cuda-drivers-535, ")
    assert "DKMS nvidia/535.183.01" in reason and "the install's fast path leaves it" in reason
    assert verdict.facts["foreign_driver"].startswith("packages cuda-drivers-535")
    assert hr.exists("/var/lib/dkms/nvidia/535.183.01/source")  # a check removes nothing
