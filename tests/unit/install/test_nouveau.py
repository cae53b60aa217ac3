import os

import pytest
from structlog.testing import capture_logs

from agent.errors import InstallError
from agent.install import nouveau
from tests.fakes.runner import FakeRunner
from tests.fakes.tree import Tree


@pytest.fixture
def host(tmp_path):
    return Tree(tmp_path)


def test_fresh_host_gets_the_blacklist_and_an_initramfs_rebuild(host):
    runner = FakeRunner().on("update-initramfs")
    with capture_logs() as logs:
        out = nouveau.ensure_nouveau_disabled(host.root, runner)
    assert out == nouveau.NouveauOutcome(True, False, "nouveau not loaded")
    assert host.read(nouveau.BLACKLIST) == "blacklist nouveau\noptions nouveau modeset=0\n"
    assert runner.commands() == ["update-initramfs -u"]
    assert logs[-1]["changed"] is True and logs[-1]["blacklist_written"] is True


def test_second_run_changes_nothing_and_runs_nothing(host):
    host.write(nouveau.BLACKLIST, nouveau.BLACKLIST_TEXT)
    runner = FakeRunner()
    out = nouveau.ensure_nouveau_disabled(host.root, runner)
    assert out.changed is False and out.reboot_required is False
    assert runner.calls == []


def test_a_different_blacklist_file_is_rewritten(host):
    host.write(nouveau.BLACKLIST, "blacklist nouveau\n")
    runner = FakeRunner().on("update-initramfs")
    assert nouveau.ensure_nouveau_disabled(host.root, runner).changed is True
    assert "modeset=0" in host.read(nouveau.BLACKLIST)
    assert runner.commands() == ["update-initramfs -u"]


def test_initramfs_older_than_the_blacklist_is_rebuilt(host):
    # A crash between writing the file and update-initramfs: the next run still rebuilds.
    image = host.write("/boot/initrd.img-6.8.0-1020-azure", "old")
    os.utime(image, (1000, 1000))
    host.write(nouveau.BLACKLIST, nouveau.BLACKLIST_TEXT)
    runner = FakeRunner().on("update-initramfs", effect=lambda argv: image.write_text("new"))
    assert nouveau.ensure_nouveau_disabled(host.root, runner).changed is True
    assert runner.commands() == ["update-initramfs -u"]
    again = FakeRunner()
    assert nouveau.ensure_nouveau_disabled(host.root, again).changed is False
    assert again.calls == []


def test_update_initramfs_failure_is_an_install_error_with_its_lines(host):
    runner = FakeRunner().on("update-initramfs", rc=1, stderr="E: mkinitramfs failure cpio 141\n")
    with pytest.raises(InstallError, match=r"update-initramfs -u failed: E: mkinitramfs failure"):
        nouveau.ensure_nouveau_disabled(host.root, runner)


def test_loaded_unused_nouveau_is_unloaded(host):
    host.write(nouveau.BLACKLIST, nouveau.BLACKLIST_TEXT)
    host.module("nouveau", refcnt=0)
    runner = FakeRunner().on("rmmod", effect=lambda argv: host.unload(argv[1]))
    out = nouveau.ensure_nouveau_disabled(host.root, runner)
    assert out == nouveau.NouveauOutcome(True, False, "nouveau unloaded")
    assert runner.commands() == ["rmmod nouveau"]
    assert nouveau.ensure_nouveau_disabled(host.root, FakeRunner()).changed is False


def test_nouveau_in_use_means_reboot_required_without_rmmod(host):
    host.module("nouveau", refcnt=2, holders=("drm_ttm_helper",))
    runner = FakeRunner().on("update-initramfs")
    out = nouveau.ensure_nouveau_disabled(host.root, runner)
    assert out.reboot_required is True and out.changed is True
    assert "in use (refcnt 2, held by drm_ttm_helper)" in out.reason
    assert runner.commands() == ["update-initramfs -u"]


def test_rmmod_refused_means_reboot_required_with_the_kernel_reason(host):
    host.write(nouveau.BLACKLIST, nouveau.BLACKLIST_TEXT)
    host.module("nouveau", refcnt=0)
    runner = FakeRunner().on("rmmod", rc=1, stderr="rmmod: ERROR: Module nouveau is in use\n")
    out = nouveau.ensure_nouveau_disabled(host.root, runner)
    assert out.reboot_required is True and out.changed is False
    assert "Module nouveau is in use" in out.reason


def test_builtin_nouveau_means_reboot_with_a_kernel_parameter_never_rmmod(host):
    # Built-in code has a /sys/module dir with parameters/ but no refcnt: loaded, not unloadable.
    host.write(nouveau.BLACKLIST, nouveau.BLACKLIST_TEXT)
    host.write("/sys/module/nouveau/parameters/modeset", "-1\n")
    runner = FakeRunner()
    out = nouveau.ensure_nouveau_disabled(host.root, runner)
    assert out.reboot_required and "built into this kernel" in out.reason
    assert runner.calls == []
