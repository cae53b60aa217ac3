import pytest

from agent.driver import foreign
from agent.driver.record import InstallRecord
from agent.host.root import HostRoot
from tests.fakes.foreign import FOREIGN, KERNEL, OTHER, PIN, STATUS, cuda_driver, ko, stanza, write


@pytest.fixture
def root(tmp_path):
    return HostRoot(tmp_path)


def test_driver_packages_spare_the_container_toolkit_and_removed_ones():
    assert foreign.driver_packages(STATUS) == FOREIGN


def test_ko_version():
    assert foreign.ko_version(ko(OTHER)) == OTHER
    assert foreign.ko_version(b"\x7fELF no modinfo") is None


def test_find_foreign_names_everything_but_ours(root):
    found = foreign.find_foreign(cuda_driver(root), PIN)
    assert found.packages == tuple(FOREIGN)
    assert found.dkms_versions == (OTHER,)
    assert found.source_trees == (f"/usr/src/nvidia-{OTHER}",)
    assert found.dkms_modules == (f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko",)
    assert "packages cuda-drivers-535" in found.describe()
    assert f"DKMS nvidia/{OTHER}" in found.describe()


def test_a_clean_host_has_none(root):
    write(root, foreign.DPKG_STATUS, stanza("bash"))
    assert not foreign.find_foreign(root, PIN)


def test_a_dkms_tree_of_our_own_earlier_install_is_not_foreign(root):
    found = foreign.find_foreign(cuda_driver(root), "595.58.03", frozenset({PIN}))
    assert found.dkms_versions == (OTHER,)  # 580.105.08 was ours: the installer replaces it
    assert f"/lib/modules/{KERNEL}/updates/dkms/nvidia-uvm.ko" not in found.dkms_modules


def test_dkms_active_links_and_kept_originals_are_no_version(root):
    """What `dkms install` leaves next to the versions (dkms.in do_install): the link
    kernel-<release>-<arch> to <version>/<release>/<arch>, original_module/."""
    tree = root.path(foreign.DKMS_TREE)
    (tree / PIN / KERNEL / "x86_64/module").mkdir(parents=True)
    (tree / f"kernel-{KERNEL}-x86_64").symlink_to(f"{PIN}/{KERNEL}/x86_64")
    (tree / "original_module" / KERNEL / "x86_64").mkdir(parents=True)
    assert foreign.dkms_versions(root) == [PIN]
    assert not foreign.find_foreign(root, PIN).dkms_versions


def test_ours_is_the_recorded_version(root):
    record = InstallRecord("580.105.08-grid-azure", PIN, KERNEL, "open", "0" * 64, "installed",
                           0, 1.0, "2026-01-01T00:00:00Z")
    assert foreign.ours_of(record) == frozenset({PIN}) and foreign.ours_of(None) == frozenset()
    found = foreign.find_foreign(cuda_driver(root), "595.58.03", foreign.ours_of(record))
    assert found.dkms_versions == (OTHER,)


@pytest.mark.parametrize("at", [0, 5, (1 << 20) - 12, (1 << 20) - 3, 1 << 20, 3 << 20])
def test_ko_file_version_across_chunks(tmp_path, at):
    path = tmp_path / "nvidia.ko"
    data = bytearray(b"\x01" * (4 << 20))
    data[at:at + len(ko(OTHER))] = ko(OTHER)
    path.write_bytes(bytes(data))
    assert foreign.ko_file_version(path) == OTHER
    path.write_bytes(b"\x01" * (2 << 20) + b"\x00version=" + OTHER.encode())  # the last bytes
    assert foreign.ko_file_version(path) == OTHER
    path.write_bytes(b"\x01" * (2 << 20))
    assert foreign.ko_file_version(path) is None


def test_a_compressed_module_is_attributed_to_the_dkms_tree_built_for_its_kernel(root):
    # Ubuntu 24.04's DKMS compresses what it builds (.ko.zst): its .modinfo is not readable
    # as is, so the DKMS tree with a build for that kernel says whose it is.
    write(root, foreign.DPKG_STATUS, stanza("bash"))
    write(root, f"/var/lib/dkms/nvidia/{PIN}/source", "")
    write(root, f"/var/lib/dkms/nvidia/{PIN}/{KERNEL}/x86_64/module/nvidia.ko.zst", b"(zstd)")
    write(root, f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko.zst", b"(zstd)")
    assert not foreign.find_foreign(root, PIN)  # ours, from a GRID --dkms install
    write(root, "/lib/modules/6.8.0-99-azure/updates/dkms/nvidia.ko.zst", b"(zstd)")
    found = foreign.find_foreign(root, PIN)  # no DKMS build for that kernel: not ours
    assert found.dkms_modules == ("/lib/modules/6.8.0-99-azure/updates/dkms/nvidia.ko.zst",)


def test_a_module_rewritten_in_place_is_read_again(root):
    path = f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko"
    write(root, path, ko(PIN))
    assert not foreign.find_foreign(root, PIN).dkms_modules
    write(root, path, ko(OTHER) + b"longer")  # a new build: new size and mtime
    assert foreign.find_foreign(root, PIN).dkms_modules == (path,)
