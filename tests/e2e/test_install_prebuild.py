"""Kernel updates on the simulated node: the pinned driver is built for the next kernel
before the reboot, without touching the running driver, and the boot into it is a fast path.

The second kernel is real: Debian's cloud flavour of the machine's kernel ABI
(`linux-headers-cloud-amd64`), so kbuild builds real modules with its vermagic.
"""

import fcntl
import os

import pytest

from agent.handoff import MARKER_CONTENT
from tests.e2e.healthrun import start_watch
from tests.e2e.installrun import MARKER, host_text, install, kill_at_step, record

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def running_driver(simnode):
    """What must not change while a prebuild runs: the loaded module and the hand-off."""
    return (host_text(simnode, "/sys/module/nvidia/version"),
            host_text(simnode, "/proc/driver/nvidia/version"), host_text(simnode, MARKER),
            sorted(p.name for p in simnode.path(
                f"/lib/modules/{simnode.kernel_release}").rglob("nvidia*.ko")))


def ko_vermagic(path):
    return ko_vermagic_bytes(path.read_bytes())


def ko_vermagic_bytes(data):
    start = data.index(b"vermagic=") + 9
    return data[start:data.index(b"\0", start)].decode().split()[0]


def test_prebuild_for_the_next_kernel_then_the_reboot_is_a_fast_path(simnode, catalog,
                                                                      next_kernel, http_server):
    assert install(simnode, catalog).returncode == 0
    before = running_driver(simnode)
    simnode.install_kernel(next_kernel)
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.named("fast_path_taken")
    started = again.named("prebuild_started")
    assert [e["kernel_release"] for e in started] == [next_kernel]
    argv = again.named("prebuild_command")[0]["argv"]
    assert {"--kernel-modules-only", f"--kernel-name={next_kernel}", "--no-kernel-module-source",
            "-M", "--no-drm"} <= set(argv)
    assert argv[:3] == ["nice", "-n", "19"]
    # The kernel's compiler is this machine's gcc-12 too: nothing to pass (compiler.py).
    assert again.named("prebuild_command")[0]["cc"] is None
    entry = record(simnode)["prebuilds"][next_kernel]
    assert entry["outcome"] == "built" and entry["error"] == "", entry
    assert entry["version"] == "580.105.08-grid-azure" and entry["how"] == "installer"
    built = list(simnode.path(f"/lib/modules/{next_kernel}").rglob("nvidia.ko"))
    assert built and ko_vermagic(built[0]) == next_kernel
    assert running_driver(simnode) == before  # the running driver and hand-off untouched
    assert record(simnode)["kernel_release"] == simnode.kernel_release

    # A third run: nothing left to build, nothing started.
    third = install(simnode, catalog)
    assert third.returncode == 0 and not third.named("prebuild_started")

    http_server.reset_counters()
    simnode.reboot(kernel_release=next_kernel)
    assert simnode.exec(["uname", "-r"]).stdout.strip() == next_kernel
    boot = install(simnode, catalog)
    assert boot.returncode == 0, boot.stderr[-3000:]
    assert boot.named("fast_path_taken"), boot.named("fast_path_declined")
    assert not boot.named("installer_started") and http_server.count() == 0
    assert host_text(simnode, MARKER) == MARKER_CONTENT
    assert record(simnode)["kernel_release"] == next_kernel


def test_boot_into_the_prebuilt_kernel_without_autoload_loads_without_the_installer(
        simnode, catalog, next_kernel, http_server):
    assert install(simnode, catalog).returncode == 0
    simnode.install_kernel(next_kernel)
    assert install(simnode, catalog).returncode == 0
    http_server.reset_counters()
    simnode.reboot(autoload=False, kernel_release=next_kernel)
    boot = install(simnode, catalog)
    assert boot.returncode == 0, boot.stderr[-3000:]
    assert boot.changed()["installer"] is False and not boot.named("installer_started")
    assert http_server.count() == 0
    assert host_text(simnode, "/sys/module/nvidia/version").strip() == "580.105.08"


def test_missing_headers_of_the_next_kernel_are_installed_with_apt(simnode, catalog,
                                                                   next_kernel):
    assert install(simnode, catalog).returncode == 0
    simnode.install_kernel(next_kernel, headers=False)
    assert not simnode.path(f"/usr/src/linux-headers-{next_kernel}/Makefile").exists()
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    assert record(simnode)["prebuilds"][next_kernel]["outcome"] == "built"
    assert simnode.path(f"/usr/src/linux-headers-{next_kernel}/Makefile").exists()


def test_a_failed_prebuild_is_recorded_and_never_fatal(simnode, catalog, next_kernel):
    assert install(simnode, catalog).returncode == 0
    before = running_driver(simnode)
    simnode.install_kernel(next_kernel)
    simnode.set_scenarios("healthy", "installer-error")
    again = install(simnode, catalog)
    assert again.returncode == 0, again.stderr[-3000:]
    entry = record(simnode)["prebuilds"][next_kernel]
    assert entry["outcome"] == "failed" and "Building kernel modules" in entry["error"], entry
    assert again.named("prebuild_failed")
    assert running_driver(simnode) == before
    # Not retried on every run (backoff), and the install record still says success.
    assert not install(simnode, catalog).named("prebuild_started")
    assert record(simnode)["outcome"] == "fast_path"


@pytest.mark.parametrize("moment", ["step", "prebuild_started", "prebuild_command",
                                    "modules_on_disk"])
def test_killed_during_a_prebuild_leaves_the_driver_and_converges(simnode, catalog,
                                                                 next_kernel, moment):
    assert install(simnode, catalog).returncode == 0
    before = running_driver(simnode)
    simnode.install_kernel(next_kernel)
    until = None
    if moment == "modules_on_disk":
        # The installer pauses after copying the modules, before its manifest lists them.
        simnode.set_scenarios("healthy", "installer-slow")
        modules = simnode.path(f"/lib/modules/{next_kernel}/kernel/drivers/video")
        until = lambda: (modules / "nvidia.ko").exists()  # noqa: E731
    event = None if moment == "step" else "prebuild_command" if until else moment
    killed = kill_at_step(simnode.agent_args(), catalog, "prebuild", event=event, until=until)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert running_driver(simnode) == before
    if until is not None:
        assert until(), "killed before the modules were on disk"
        simnode.set_scenarios("healthy")
    rerun = install(simnode, catalog)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert record(simnode)["prebuilds"][next_kernel]["outcome"] == "built"
    assert running_driver(simnode) == before


def test_watch_prebuilds_a_new_kernel_but_never_under_someone_elses_lock(simnode, catalog,
                                                                       next_kernel, tmp_path):
    assert install(simnode, catalog).returncode == 0
    before = running_driver(simnode)
    lock = simnode.path("/run/grid-agent/lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # an install (or a debug-node run) is in progress
    watch = start_watch(simnode, catalog, tmp_path)
    try:
        simnode.install_kernel(next_kernel)
        watch.wait_event("prebuild_deferred", timeout=60)
        assert not watch.named("prebuild_started")
        fcntl.flock(fd, fcntl.LOCK_UN)
        watch.wait_event("prebuild_finished", timeout=120, kernel_release=next_kernel)
        assert record(simnode)["prebuilds"][next_kernel]["outcome"] == "built"
        watch.wait_event("health_verdict", count=len(watch.named("health_verdict")) + 1)
        assert len(watch.named("prebuild_started")) == 1  # built once, not every cycle
    finally:
        os.close(fd)
        assert watch.stop() == 0
    assert running_driver(simnode) == before


def test_prebuild_uses_the_next_kernels_compiler_with_the_real_kbuild(simnode, next_kernel,
                                                                      http_server, tmp_path):
    """host-gcc-11: the node's gcc is 11, the next kernel was built by gcc-12; the .run has
    no prebuilt modules, so the prebuild is the real kbuild against that kernel's headers."""
    import hashlib

    from tests.e2e.installrun import catalog_env
    from tests.simnode.driver_run import build_fake_run

    run = build_fake_run(tmp_path / "uncached", releases=[])
    http_server.add(f"/u/{run.name}", run.read_bytes())
    env = catalog_env(http_server.url(f"/u/{run.name}"),
                      hashlib.sha256(run.read_bytes()).hexdigest())
    simnode.set_scenarios("host-gcc-11")
    assert install(simnode, env).returncode == 0  # installs gcc-12 for the running kernel
    simnode.install_kernel(next_kernel)
    again = install(simnode, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not again.named("prebuild_failed"), again.named("prebuild_failed")
    assert again.named("prebuild_command")[0]["cc"] == "gcc-12"
    assert record(simnode)["prebuilds"][next_kernel]["outcome"] == "built"
    ko = next(simnode.path(f"/lib/modules/{next_kernel}").rglob("nvidia.ko")).read_bytes()
    assert ko_vermagic_bytes(ko) == next_kernel and b"GCC: (Debian 12.2.0" in ko
