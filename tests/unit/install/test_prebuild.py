"""Prebuilder with a fake kit and real files: DKMS path, failures recorded, never raised."""

import dataclasses
import threading

import pytest
from structlog.testing import capture_logs

from agent.catalog import resolve_release
from agent.driver.record import read_prebuilds
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install.pin import resolve_pin
from agent.install.pipeline import install
from agent.install.prebuild import Prebuilder, watch_loop
from tests.fakes.kit import RUN_SHA256, FakeNode, settings

NEXT = "6.8.0-1021-azure"
MODVER = "580.105.08"
DKMS = ["nice", "-n", "19", "dkms", "install", "-m", "nvidia", "-v", MODVER, "-k", NEXT]


@pytest.fixture
def node(tmp_path):
    node = FakeNode(HostRoot(tmp_path))
    assert install(settings(), node.root, HostRunner(pid=None), node.kit()).outcome == \
        "installed"
    for release in (node.kernel, NEXT):
        node.root.path(f"/lib/modules/{release}/kernel").mkdir(parents=True, exist_ok=True)
        node.root.path("/boot").mkdir(exist_ok=True)
        node.root.path(f"/boot/vmlinuz-{release}").write_bytes(b"MZ")
    return node


def dkms_host(node):
    dkms = node.root.path("/usr/sbin/dkms")
    dkms.parent.mkdir(parents=True, exist_ok=True)
    dkms.write_text("#!/bin/sh\n")
    dkms.chmod(0o755)
    conf = node.root.path(f"/usr/src/nvidia-{MODVER}/dkms.conf")
    conf.parent.mkdir(parents=True)
    conf.write_text('PACKAGE_NAME="nvidia"\n')


def builder(node):
    s = settings()
    return Prebuilder(s, node.root, HostRunner(pid=None), node.kit(), resolve_pin(s, node.kit()))


def modules_built(node):
    dest = node.root.path(f"/lib/modules/{NEXT}/updates/dkms")
    dest.mkdir(parents=True)
    for name in ("nvidia", "nvidia-uvm", "nvidia-modeset"):
        (dest / f"{name}.ko").write_bytes(b"\x00version=" + MODVER.encode() + b"\x00")


def test_a_dkms_registered_driver_is_built_with_dkms_install(node, fp):
    dkms_host(node)
    fp.register(DKMS, callback=lambda process: modules_built(node))
    assert builder(node).run_pending(node.kernel) == [NEXT]
    entry = read_prebuilds(node.root)[NEXT]
    assert (entry["outcome"], entry["how"], entry["error"]) == ("built", "dkms", "")
    assert fp.call_count(DKMS) == 1
    assert builder(node).run_pending(node.kernel) == []  # built: nothing more to do


def test_a_failed_build_is_recorded_never_raised_and_not_retried_at_once(node, fp):
    dkms_host(node)
    fp.register(DKMS, returncode=10, stderr="Error! Bad return status for module build")
    assert builder(node).run_pending(node.kernel) == [NEXT]
    entry = read_prebuilds(node.root)[NEXT]
    assert entry["outcome"] == "failed" and "prebuild for kernel" in entry["error"]
    assert builder(node).run_pending(node.kernel) == []  # backoff: not every cycle


def test_a_failed_dkms_build_names_dkms_not_an_older_installer_log(node, fp):
    # An installer-path attempt for this kernel left its log; DKMS writes make.log instead.
    old = node.root.path(f"/var/log/nvidia-installer-{NEXT}.log")
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text("ERROR: an older attempt's installer error\n")
    dkms_host(node)
    fp.register(DKMS, returncode=10, stderr="\nError! Bad return status for module build on "
                "kernel: 6.8.0-1021-azure (x86_64)\nConsult the make.log.")
    with capture_logs() as logs:
        builder(node).run_pending(node.kernel)
    entry = read_prebuilds(node.root)[NEXT]
    assert "Bad return status" in entry["error"] and "older attempt" not in entry["error"]
    failed = next(e for e in logs if e["event"] == "prebuild_failed")
    assert f"/var/lib/dkms/nvidia/{MODVER}/build/make.log" in failed["error"]


def test_a_dkms_install_that_leaves_no_modules_names_dkms_make_log(node, fp):
    dkms_host(node)
    fp.register(DKMS)  # exits 0, builds nothing
    builder(node).run_pending(node.kernel)
    entry = read_prebuilds(node.root)[NEXT]
    assert entry["outcome"] == "failed" and "are not under" in entry["error"]
    assert f"/var/lib/dkms/nvidia/{MODVER}/build/make.log" in entry["error"]
    assert "nvidia-installer" not in entry["error"]


def test_modules_already_on_disk_count_as_built_without_a_build(node):
    modules_built(node)  # DKMS's kernel hook did it, or a killed run got that far
    assert builder(node).run_pending(node.kernel) == [NEXT]
    assert read_prebuilds(node.root)[NEXT]["how"] == "on_disk"


def test_a_modules_version_mismatch_is_not_built(node, fp):
    dest = node.root.path(f"/lib/modules/{NEXT}/kernel/drivers/video")
    dest.mkdir(parents=True)
    for name in ("nvidia", "nvidia-uvm", "nvidia-modeset"):
        (dest / f"{name}.ko").write_bytes(b"\x00version=570.172.08\x00")
    dkms_host(node)
    fp.register(DKMS, callback=lambda process: modules_built(node))
    assert builder(node).run_pending(node.kernel) == [NEXT]
    assert read_prebuilds(node.root)[NEXT]["outcome"] == "built"


def test_watch_resolves_the_pin_once_so_an_override_warns_once(tmp_path):
    # The real catalog behind the kit: its 580.105.08 pin overridden by the configured
    # SHA-256, which resolve_release logs as a warning every time it resolves.
    node = FakeNode(HostRoot(tmp_path))
    s = settings(host_root=str(tmp_path), nsenter="false", driver_sha256=RUN_SHA256)
    assert install(s, node.root, HostRunner(pid=None), node.kit()).outcome == "installed"
    stop, looks = threading.Event(), []

    def scan_pci():  # one call per cycle; the third ends the loop
        looks.append(1)
        if len(looks) == 3:
            stop.set()
        return list(node.devices)

    kit = dataclasses.replace(node.kit(), scan_pci=scan_pci, resolve_release=resolve_release)
    with capture_logs() as logs:
        # Its own thread: watch_loop renices the thread it runs in.
        loop = threading.Thread(target=watch_loop, args=(s, stop), kwargs={
            "kit": kit, "interval": 0})
        loop.start()
        loop.join(timeout=60)
    assert not loop.is_alive()
    assert len(looks) == 3
    events = [e["event"] for e in logs]
    assert "prebuild_cycle_crashed" not in events, logs
    assert events.count("driver_sha256_overridden") == 1
