"""The reboot sentinel and its .pkgs with real files, through a host root whose /var/run
links to /run (absolute, as on Ubuntu): written inside the root, cleared only if ours."""

import pytest

from agent.host.root import HostRoot
from agent.install import upgrade as staging
from agent.settings import reboot_sentinel


@pytest.fixture
def root(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var/run").symlink_to("/run")  # resolved inside the root, never the machine's
    return HostRoot(tmp_path)


def test_sentinel_and_pkgs_land_in_the_hosts_run_and_clear_when_only_ours(root, tmp_path):
    staging.write_sentinel(root, "/var/run/reboot-required", "580.126.09-grid-azure")
    staging.write_sentinel(root, "/var/run/reboot-required", "580.126.09-grid-azure")
    assert (tmp_path / "run/reboot-required").read_text() == staging.SENTINEL_TEXT
    assert (tmp_path / "run/reboot-required.pkgs").read_text() == \
        "nvidia-grid-driver-580.126.09-grid-azure\n"
    staging._clear_sentinel(root, "/var/run/reboot-required", "580.126.09-grid-azure")
    assert not (tmp_path / "run/reboot-required").exists()
    assert not (tmp_path / "run/reboot-required.pkgs").exists()


def test_a_kernel_updates_reboot_request_survives_our_clear(root, tmp_path):
    (tmp_path / "run/reboot-required").write_text(staging.SENTINEL_TEXT)
    (tmp_path / "run/reboot-required.pkgs").write_text("linux-image-6.8.0-1020-azure\n")
    staging.write_sentinel(root, "/var/run/reboot-required", "580.126.09-grid-azure")
    staging._clear_sentinel(root, "/var/run/reboot-required", "580.126.09-grid-azure")
    assert (tmp_path / "run/reboot-required").exists()
    assert (tmp_path / "run/reboot-required.pkgs").read_text() == \
        "linux-image-6.8.0-1020-azure\n"


@pytest.mark.parametrize("bad", ["reboot-required", "/var/../etc/passwd", "/"])
def test_the_setting_is_an_absolute_host_file(bad):
    with pytest.raises(ValueError, match="absolute host file path"):
        reboot_sentinel(bad)
    assert reboot_sentinel(" /var/run/reboot-required ") == "/var/run/reboot-required"
    assert reboot_sentinel("") == ""


def test_clear_removes_the_boot_guards_and_the_staged_section(root, tmp_path):
    from agent.driver.sections import read_section, write_section

    write_section(root, "staged", {"version": "580.126.09-grid-azure",
                                   "sentinel": "/var/run/reboot-required"})
    staging.write_sentinel(root, "/var/run/reboot-required", "580.126.09-grid-azure")
    conf = root.path(staging.BLACKLIST)
    conf.parent.mkdir(parents=True)
    conf.write_text(staging.BLACKLIST_TEXT)
    assert staging.clear(root, "") is True
    assert not conf.exists() and read_section(root, "staged") is None
    assert not (tmp_path / "run/reboot-required").exists()
    assert staging.clear(root, "") is False  # nothing left: a second clear changes nothing
