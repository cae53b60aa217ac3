"""Kernel updates on a node with DKMS (scenario `dkms`): the agent passes `--dkms` because
the host has the command, the installer registers nvidia/<version> with DKMS, and the
prebuild for the next kernel is `dkms install`, a real kbuild by the rig's dkms
(tests/simnode/stubs/dkmssim.py) against that kernel's real headers.

As on Ubuntu, installing a kernel runs DKMS's postinst hook (`dkms autoinstall`): with
the headers it builds the modules itself (the prebuild finds them on disk), without them
it fails and the agent's prebuild installs the headers and runs `dkms install`.
"""

import pytest

from agent.handoff import MARKER_CONTENT
from tests.e2e.healthrun import check, statuses
from tests.e2e.installrun import MARKER, host_text, install, record, run_agent
from tests.e2e.test_install_prebuild import ko_vermagic, ko_vermagic_bytes, running_driver

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

MODVER = "580.105.08"


def dkms_status(simnode):
    return simnode.exec(["dkms", "status"]).stdout.splitlines()


def dkms_ko(simnode, release):
    return simnode.path(f"/lib/modules/{release}/updates/dkms/nvidia.ko")


def install_with_dkms(simnode, catalog):
    simnode.set_scenarios("healthy", "dkms")
    first = install(simnode, catalog)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "--dkms" in first.named("installer_started")[0]["argv"]
    running = simnode.kernel_release
    assert dkms_status(simnode) == [f"nvidia/{MODVER}, {running}, x86_64: installed"]
    assert ko_vermagic(dkms_ko(simnode, running)) == running
    # DKMS owns the modules: the installer put none of its own under kernel/.
    assert not simnode.path(f"/lib/modules/{running}/kernel/drivers/video/nvidia.ko").exists()
    return first


def assert_not_foreign(simnode, catalog):
    _, verdict, run = check(simnode, catalog)
    assert verdict is not None, run.stderr[-3000:]
    assert statuses(verdict)["foreign_driver"] == "ok", verdict


def test_dkms_prebuild_for_the_next_kernel_then_the_reboot_is_a_fast_path(
        simnode, catalog, next_kernel, http_server):
    install_with_dkms(simnode, catalog)
    assert_not_foreign(simnode, catalog)
    before = running_driver(simnode)
    simnode.install_kernel(next_kernel, headers=False)  # DKMS's hook fails: no headers
    hook = host_text(simnode, "/var/log/grid-sim-dkms-hook.log")
    assert f"Your kernel headers for kernel {next_kernel} cannot be found" in hook

    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.named("fast_path_taken")
    command = again.named("prebuild_command")[0]
    assert command["argv"] == ["nice", "-n", "19", "dkms", "install", "-m", "nvidia", "-v",
                               MODVER, "-k", next_kernel]
    entry = record(simnode)["prebuilds"][next_kernel]
    assert (entry["outcome"], entry["how"], entry["error"]) == ("built", "dkms", ""), entry
    assert ko_vermagic(dkms_ko(simnode, next_kernel)) == next_kernel
    assert f"nvidia/{MODVER}, {next_kernel}, x86_64: installed" in dkms_status(simnode)
    assert running_driver(simnode) == before  # the running driver and hand-off untouched
    assert record(simnode)["kernel_release"] == simnode.kernel_release
    assert_not_foreign(simnode, catalog)  # our own registration, two kernels' links
    assert not install(simnode, catalog).named("prebuild_started")

    http_server.reset_counters()
    simnode.reboot(kernel_release=next_kernel)
    boot = install(simnode, catalog)
    assert boot.returncode == 0, boot.stderr[-3000:]
    assert boot.named("fast_path_taken"), boot.named("fast_path_declined")
    assert not boot.named("installer_started") and http_server.count() == 0
    assert host_text(simnode, MARKER) == MARKER_CONTENT
    assert host_text(simnode, "/sys/module/nvidia/version").strip() == MODVER
    assert record(simnode)["kernel_release"] == next_kernel


def test_dkms_own_kernel_hook_built_it_so_the_prebuild_finds_it_on_disk(simnode, catalog,
                                                                      next_kernel):
    install_with_dkms(simnode, catalog)
    simnode.install_kernel(next_kernel)  # headers present: `dkms autoinstall` builds it
    assert ko_vermagic(dkms_ko(simnode, next_kernel)) == next_kernel
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not again.named("prebuild_command")
    assert record(simnode)["prebuilds"][next_kernel]["how"] == "on_disk"


def test_a_failed_dkms_build_is_recorded_and_never_fatal(simnode, catalog, next_kernel):
    install_with_dkms(simnode, catalog)
    before = running_driver(simnode)
    # A source that no longer compiles for any kernel: the real kbuild fails in DKMS.
    source = simnode.path(f"/usr/src/nvidia-{MODVER}/nvidia.c")
    source.write_text("#error grid-sim: this source does not build\n" + source.read_text())
    simnode.install_kernel(next_kernel)
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    entry = record(simnode)["prebuilds"][next_kernel]
    assert entry["outcome"] == "failed", entry
    assert "Bad return status for module build on kernel" in entry["error"], entry
    assert again.named("prebuild_failed")
    assert not dkms_ko(simnode, next_kernel).exists()
    assert running_driver(simnode) == before
    assert record(simnode)["outcome"] == "fast_path"


def test_missing_headers_with_apt_offline_fail_the_dkms_prebuild_only(simnode, catalog,
                                                                     next_kernel):
    install_with_dkms(simnode, catalog)
    before = running_driver(simnode)
    simnode.install_kernel(next_kernel, headers=False)
    simnode.set_scenarios("healthy", "dkms", "apt-offline")
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    entry = record(simnode)["prebuilds"][next_kernel]
    assert entry["outcome"] == "failed" and entry["error"], entry
    assert not again.named("prebuild_command")  # never reached dkms without headers
    assert running_driver(simnode) == before


def test_uninstall_removes_the_dkms_registration_from_every_kernel(simnode, catalog,
                                                                   next_kernel):
    install_with_dkms(simnode, catalog)
    simnode.install_kernel(next_kernel)  # the hook built it for the next kernel too
    assert len(dkms_status(simnode)) == 2
    gone = run_agent(simnode.agent_args(), catalog, "uninstall")
    assert gone.returncode == 0, gone.stderr[-3000:]
    # nvidia-installer's uninstall runs `dkms remove -m nvidia -v <version> --all`.
    assert dkms_status(simnode) == []
    assert not simnode.path(f"/var/lib/dkms/nvidia/{MODVER}").exists()
    assert not simnode.path(f"/usr/src/nvidia-{MODVER}").exists()
    for release in (simnode.kernel_release, next_kernel):
        assert not dkms_ko(simnode, release).exists()


def test_dkms_builds_with_the_kernels_compiler_the_agent_passes(simnode, catalog,
                                                                next_kernel):
    """host-gcc-11 (Ubuntu 22.04's shape, no compiler pin in either kernel's headers): the
    CC DKMS's own hook exports is overridden by kbuild's `CC = gcc` for this plain Kbuild
    source, so its real kbuild runs gcc-11 and fails on the gcc-12 kernel's flags; the
    agent's `dkms install` carries MAKEFLAGS=CC=gcc-12 (compiler.py) into the same
    kbuild, which succeeds."""
    simnode.set_scenarios("healthy", "host-gcc-11", "dkms")
    first = install(simnode, catalog)  # installs gcc-12 for the running kernel
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.named("installer_started")[0]["cc"] == "gcc-12"
    assert ko_vermagic(dkms_ko(simnode, simnode.kernel_release)) == simnode.kernel_release
    simnode.install_kernel(next_kernel)
    hook = host_text(simnode, "/var/log/grid-sim-dkms-hook.log")
    assert f"Bad return status for module build on kernel: {next_kernel}" in hook
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.named("prebuild_command")[0]["cc"] == "gcc-12"
    entry = record(simnode)["prebuilds"][next_kernel]
    assert (entry["outcome"], entry["how"]) == ("built", "dkms"), entry
    ko = dkms_ko(simnode, next_kernel).read_bytes()
    assert ko_vermagic_bytes(ko) == next_kernel and b"GCC: (Debian 12.2.0" in ko
