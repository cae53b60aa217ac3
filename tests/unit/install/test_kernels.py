"""Pending kernels from real files under a host root: /lib/modules, /boot, reboot-required."""

import pytest

from agent.host.root import HostRoot
from agent.install.kernels import (
    installed_kernels,
    pending_kernels,
    reboot_required_kernels,
    version_key,
)

RUNNING = "6.8.0-1017-azure"


@pytest.fixture
def root(tmp_path):
    return HostRoot(tmp_path)


def kernel(root, release, *, image=True):
    root.path(f"/lib/modules/{release}/kernel").mkdir(parents=True)
    if image:
        root.path("/boot").mkdir(exist_ok=True)
        root.path(f"/boot/vmlinuz-{release}").write_bytes(b"MZ")


def test_natural_version_order():
    assert version_key("6.8.0-1020-azure") > version_key("6.8.0-1017-azure")
    assert version_key("6.10.0-1-azure") > version_key("6.9.0-9-azure")


def test_only_trees_with_a_kernel_image_count(root):
    kernel(root, RUNNING)
    kernel(root, "6.8.0-1020-azure")
    kernel(root, "6.8.0-1019-azure", image=False)  # headers' build link only: no kernel
    assert installed_kernels(root) == [RUNNING, "6.8.0-1020-azure"]


def test_newer_kernels_are_pending_older_ones_are_not(root):
    for release in (RUNNING, "6.8.0-1015-azure", "6.8.0-1020-azure", "6.8.0-1021-azure"):
        kernel(root, release)
    found = pending_kernels(root, RUNNING)
    assert [(k.release, k.why) for k in found] == [
        ("6.8.0-1021-azure", "newer kernel installed"),
        ("6.8.0-1020-azure", "newer kernel installed")]


def test_reboot_required_pkgs_names_kernels_even_older_ones(root):
    kernel(root, RUNNING)
    kernel(root, "6.8.0-1015-azure")
    root.path("/run").mkdir()
    root.path("/run/reboot-required.pkgs").write_text(
        "linux-base\nlinux-image-6.8.0-1015-azure\nlinux-image-unsigned-6.9.0-1-azure\n")
    assert reboot_required_kernels(root) == ["6.8.0-1015-azure", "6.9.0-1-azure"]
    # 6.9.0-1-azure has no module tree here: named, but not installed, so not pending.
    assert [k.release for k in pending_kernels(root, RUNNING)] == ["6.8.0-1015-azure"]


def test_no_module_tree_means_nothing_pending(root):
    assert pending_kernels(root, RUNNING) == []
