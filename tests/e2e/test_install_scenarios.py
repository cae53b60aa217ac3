"""Every scenario of the simulated node gets the right outcome and exit code."""

import json

import pytest

from agent.handoff import MARKER_CONTENT
from tests.e2e.installrun import (
    MARKER,
    host_text,
    record,
    run_agent,
)

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def install(simnode, env, **kw):
    return run_agent(simnode.agent_args(), env, "install", **kw)


def assert_failed(simnode, result, code, *words):
    assert result.returncode == code, result.stderr[-3000:]
    for word in words:
        assert word in result.error(), result.error()
    assert host_text(simnode, MARKER) is None
    rec = record(simnode)
    assert rec is not None and (rec["outcome"], rec["exit_code"]) == ("failed", code)


def assert_installed(simnode, result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert host_text(simnode, MARKER) == MARKER_CONTENT
    assert record(simnode)["outcome"] == "installed"


# Health problems, not install problems: the driver is in place and the sidecar reports them.
@pytest.mark.parametrize("scenario", ["unlicensed", "wrong-profile", "mig-disabled"])
def test_health_scenarios_install_fine(simnode, catalog, scenario):
    simnode.set_scenarios(scenario)
    assert_installed(simnode, install(simnode, catalog))


def installer_runs(simnode):
    """The fake installer's own record of its install/uninstall runs (one JSON line each)."""
    text = host_text(simnode, "/var/lib/grid-sim/installer-runs.jsonl") or ""
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("scenario", ["requires-open", "recommend-unavailable"])
def test_a_fresh_default_install_runs_the_installer_once_with_open(simnode, catalog, scenario):
    # The Blackwell node as it really is: the proprietary module cannot drive it. `auto`
    # asks the installer (open), or without an answer takes open for branch 580.
    simnode.set_scenarios(scenario)
    result = install(simnode, catalog)
    assert_installed(simnode, result)
    runs = installer_runs(simnode)
    assert [r["module_type"] for r in runs] == ["open"], runs
    assert not result.named("module_type_fallback")
    assert record(simnode)["module_type"] == "open"
    assert "Open Kernel Module" in host_text(simnode, "/proc/driver/nvidia/version")
    assert bool(result.named("module_type_from_branch")) == (scenario != "requires-open")


def test_requires_open_falls_back_with_a_warning(simnode, catalog):
    simnode.set_scenarios("requires-open")
    result = install(simnode, {**catalog, "GRID_AGENT_KERNEL_MODULE_TYPE": "proprietary"})
    assert_installed(simnode, result)
    warning, = result.named("module_type_fallback")
    assert "GRID_AGENT_KERNEL_MODULE_TYPE" in warning["hint"]
    assert record(simnode)["module_type"] == "open"
    assert "Open Kernel Module" in host_text(simnode, "/proc/driver/nvidia/version")
    assert [r["module_type"] for r in installer_runs(simnode)] == ["proprietary", "open"]


def test_requires_open_when_the_proprietary_module_loads_without_a_gpu(simnode, catalog):
    # The other shape: modprobe succeeds, the NVRM line is logged, nvidia-smi finds no GPU.
    simnode.set_scenarios("requires-open-loads")
    result = install(simnode, {**catalog, "GRID_AGENT_KERNEL_MODULE_TYPE": "proprietary"})
    assert_installed(simnode, result)
    assert result.named("module_type_fallback")
    assert record(simnode)["module_type"] == "open"
    assert "Open Kernel Module" in host_text(simnode, "/proc/driver/nvidia/version")


def test_requires_open_with_proprietary_strict_refuses(simnode, catalog):
    simnode.set_scenarios("requires-open")
    result = install(simnode, {**catalog, "GRID_AGENT_KERNEL_MODULE_TYPE": "proprietary-strict"})
    assert_failed(simnode, result, 6, "requires the NVIDIA open kernel modules",
                  "proprietary-strict")


def test_secure_boot_refused_before_anything_is_built(simnode, catalog):
    simnode.set_scenarios("secure-boot")
    result = install(simnode, catalog)
    assert_failed(simnode, result, 4, "Secure Boot")
    assert "installer" not in result.steps()


def test_missing_headers_installed_by_apt(simnode, catalog):
    simnode.set_scenarios("headers-missing")
    result = install(simnode, catalog)
    assert_installed(simnode, result)
    assert result.changed()["packages"] is True


def test_missing_headers_offline_fails_with_the_package_named(simnode, catalog):
    simnode.set_scenarios("headers-missing", "apt-offline")
    result = install(simnode, catalog)
    assert_failed(simnode, result, 4, f"linux-headers-{simnode.kernel_release}",
                  "cannot reach the package mirror")
    assert "installer" not in result.steps()


def test_dpkg_lock_held_then_released(simnode, catalog):
    simnode.set_scenarios("headers-missing", "dpkg-locked")
    result = install(simnode, catalog)
    assert_installed(simnode, result)
    assert result.changed()["packages"] is True


def test_installer_error_is_exit_6_with_its_error_lines(simnode, catalog):
    simnode.set_scenarios("installer-error")
    result = install(simnode, catalog)
    assert_failed(simnode, result, 6, "ERROR:")
    # The compiler's error (the cause), not only the installer's ERROR lines.
    assert "nv.c: error: implicit declaration of function" in result.error()


def test_smi_exit_14_is_exit_7_and_never_published(simnode, catalog):
    simnode.set_scenarios("smi-exit-14")
    result = install(simnode, catalog)
    assert_failed(simnode, result, 7, "nvidia-smi exited 14")
    assert "publish" not in result.steps()
    simnode.set_scenarios("healthy")  # nvidia-smi recovers: no rebuild needed to converge
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.named("fast_path_taken") and "installer" not in again.steps()
    assert host_text(simnode, MARKER) == MARKER_CONTENT


def test_nouveau_loaded_is_blacklisted_and_unloaded(simnode, catalog):
    simnode.set_scenarios("nouveau-loaded")
    result = install(simnode, catalog, device="target-nouveau")
    assert_installed(simnode, result)
    assert result.changed()["nouveau"] is True
    assert not simnode.path("/sys/module/nouveau").exists()


def test_older_driver_loaded_and_unused_is_replaced(simnode, catalog):
    simnode.set_scenarios("old-driver-loaded")
    result = install(simnode, catalog, device="target-nvidia")
    assert_installed(simnode, result)
    assert result.changed()["stale_unload"] is True
    assert host_text(simnode, "/sys/module/nvidia/version").strip() == "580.105.08"


def test_older_driver_in_use_means_reboot_required(simnode, catalog):
    simnode.set_scenarios("old-driver-loaded", "module-in-use")
    result = install(simnode, catalog, device="target-nvidia")
    assert_failed(simnode, result, 6, "reboot required")
    assert "installer" not in result.steps()


def test_missing_gridd_unit_fails_instead_of_staying_unlicensed(simnode, catalog):
    simnode.set_scenarios("no-gridd-unit")
    result = install(simnode, catalog)
    assert_failed(simnode, result, 6, "nvidia-gridd.service", "unlicensed")
    assert "publish" not in result.steps()
