import pytest

from agent.errors import InstallError
from agent.host.root import HostRoot
from agent.install import foreign
from tests.fakes.runner import FakeRunner

PIN = "580.105.08"
OTHER = "535.183.01"
KERNEL = "6.8.0-1030-azure"


def stanza(package, status="install ok installed", version="535.183.01-0ubuntu0.22.04.1"):
    return (f"Package: {package}\nStatus: {status}\nPriority: optional\nSection: non-free/libs\n"
            f"Architecture: amd64\nVersion: {version}\nDescription: {package}\n"
            " a continuation line: Package: not-a-package\n")


# A CUDA driver from apt next to the container toolkit the GPU Operator needs.
STATUS = "\n".join([
    stanza("bash", version="5.1-6ubuntu1"),
    stanza("nvidia-driver-535"), stanza("nvidia-dkms-535"), stanza("libnvidia-compute-535"),
    stanza("nvidia-utils-535"), stanza("nvidia-kernel-common-535"), stanza("cuda-drivers-535"),
    stanza("libnvidia-container1", version="1.17.8-1"),
    stanza("nvidia-container-toolkit", version="1.17.8-1"),
    stanza("nvidia-driver-470", status="deinstall ok config-files"),
])
FOREIGN = ["cuda-drivers-535", "libnvidia-compute-535", "nvidia-dkms-535", "nvidia-driver-535",
           "nvidia-kernel-common-535", "nvidia-utils-535"]


def ok_runner():
    """Every host command succeeds."""
    return FakeRunner().on()


def write(root, host_path, data, mode=0o644):
    path = root.path(host_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    path.chmod(mode)


def ko(version):
    return b"\x7fELF...\x00license=NVIDIA\x00version=" + version.encode() + b"\x00srcversion=X\x00"


@pytest.fixture
def root(tmp_path):
    return HostRoot(tmp_path)


@pytest.fixture
def cuda_host(root):
    write(root, foreign.DPKG_STATUS, STATUS)
    write(root, f"/var/lib/dkms/nvidia/{OTHER}/source", "")
    write(root, f"/usr/src/nvidia-{OTHER}/dkms.conf", 'PACKAGE_NAME="nvidia"\n')
    write(root, f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko", ko(OTHER))
    # Ours, from a GRID install with --dkms: never foreign.
    write(root, f"/var/lib/dkms/nvidia/{PIN}/source", "")
    write(root, f"/usr/src/nvidia-{PIN}/dkms.conf", 'PACKAGE_NAME="nvidia"\n')
    write(root, f"/lib/modules/{KERNEL}/updates/dkms/nvidia-uvm.ko", ko(PIN))
    return root


def test_driver_packages_spare_the_container_toolkit_and_removed_ones():
    assert foreign.driver_packages(STATUS) == FOREIGN


def test_ko_version():
    assert foreign.ko_version(ko(OTHER)) == OTHER
    assert foreign.ko_version(b"\x7fELF no modinfo") is None


def test_find_foreign_names_everything_but_ours(cuda_host):
    found = foreign.find_foreign(cuda_host, PIN)
    assert found.packages == tuple(FOREIGN)
    assert found.dkms_versions == (OTHER,)
    assert found.source_trees == (f"/usr/src/nvidia-{OTHER}",)
    assert found.dkms_modules == (f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko",)
    assert "packages cuda-drivers-535" in found.describe()
    assert f"DKMS nvidia/{OTHER}" in found.describe()


def test_a_clean_host_has_none(root):
    write(root, foreign.DPKG_STATUS, stanza("bash"))
    assert not foreign.find_foreign(root, PIN)
    runner = ok_runner()
    calls = []
    assert foreign.remove_foreign(root, runner, PIN, unload=lambda *a, **k: calls.append(a),
                                  purge=calls.append) is False
    assert calls == [] and runner.calls == []


def test_unused_it_is_unloaded_purged_and_its_dkms_tree_removed(cuda_host):
    runner = ok_runner()
    unloads, purges = [], []

    def purge(pkgs):
        purges.append(pkgs)
        write(cuda_host, foreign.DPKG_STATUS, "\n".join(
            s for s in STATUS.split("\n\n") if s.split("\n")[0][9:] not in pkgs))

    def unload(root, runner, *, want_version):
        unloads.append(want_version)
        return True

    assert foreign.remove_foreign(cuda_host, runner, PIN, unload=unload, purge=purge) is True
    assert unloads == [PIN] and purges == [FOREIGN]
    assert not cuda_host.exists(f"/var/lib/dkms/nvidia/{OTHER}")
    assert not cuda_host.exists(f"/usr/src/nvidia-{OTHER}")
    assert not cuda_host.exists(f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko")
    assert cuda_host.exists(f"/var/lib/dkms/nvidia/{PIN}/source")  # ours stays
    assert cuda_host.exists(f"/lib/modules/{KERNEL}/updates/dkms/nvidia-uvm.ko")
    assert ["depmod", "-a", KERNEL] in runner.calls
    assert "libnvidia-container1" in cuda_host.read_text(foreign.DPKG_STATUS)


def test_in_use_it_is_exit_6_naming_it_and_nothing_is_removed(cuda_host):
    def unload(root, runner, *, want_version):
        raise InstallError("reboot required: NVIDIA driver 535.183.01 is loaded and in use "
                           "(pid 4242 (python3) has /dev/nvidia* open)")

    purges = []
    with pytest.raises(InstallError) as err:
        foreign.remove_foreign(cuda_host, ok_runner(), PIN, unload=unload, purge=purges.append)
    assert err.value.exit_code == 6
    assert "another NVIDIA driver is installed" in err.value.message
    assert "nvidia-driver-535" in err.value.message and "pid 4242" in err.value.message
    assert purges == [] and cuda_host.exists(f"/var/lib/dkms/nvidia/{OTHER}")


def test_what_apt_leaves_behind_is_exit_6(cuda_host):
    with pytest.raises(InstallError, match="could not be fully removed: packages"):
        foreign.remove_foreign(cuda_host, ok_runner(), PIN, unload=lambda *a, **k: False,
                               purge=lambda pkgs: None)


def test_an_aks_prebake_is_torn_down_like_agentbaker_does(root):
    write(root, foreign.AKS_PREBAKE_MARKER, "")
    write(root, "/usr/bin/lib64/libnvidia-ml.so.1", "")
    write(root, "/etc/ld.so.conf.d/nvidia.conf", "/usr/bin/lib64\n")
    write(root, "/var/lib/dkms/nvidia/550.144.03/source", "")
    runner = ok_runner()
    assert foreign.remove_foreign(root, runner, PIN, unload=lambda *a, **k: False,
                                  purge=lambda pkgs: pytest.fail("no packages to purge"))
    for gone in ("/usr/bin/lib64", "/etc/ld.so.conf.d/nvidia.conf", foreign.AKS_PREBAKE_MARKER,
                 "/var/lib/dkms/nvidia/550.144.03"):
        assert not root.exists(gone), gone
    assert ["ldconfig"] in runner.calls


def test_a_dkms_tree_of_our_own_earlier_install_is_not_foreign(cuda_host):
    found = foreign.find_foreign(cuda_host, "595.58.03", frozenset({PIN}))
    assert found.dkms_versions == (OTHER,)  # 580.105.08 was ours: the installer replaces it
    assert f"/lib/modules/{KERNEL}/updates/dkms/nvidia-uvm.ko" not in found.dkms_modules


def apt_runner(simulated):
    """apt-get -s answering with the packages a purge would take; the rest succeeds."""
    return FakeRunner().on("apt-get", "-q", "-s", stdout=simulated).on()


def test_purge_runs_when_apt_would_take_only_those_packages():
    runner = apt_runner("NOTE: This is only a simulation!\nPurg nvidia-driver-535 [535.183.01-0]\n"
                       "Purg libnvidia-compute-535 [535.183.01-0]\n")
    foreign.purge_with_apt(runner, ["nvidia-driver-535", "libnvidia-compute-535"], lock_wait=30)
    assert runner.calls[0][:4] == ["apt-get", "-q", "-s", "purge"]
    assert runner.calls[1][-3:] == ["purge", "nvidia-driver-535", "libnvidia-compute-535"]


def test_purge_that_would_take_a_cuda_toolkit_is_refused_naming_it():
    runner = apt_runner("Purg nvidia-driver-535 [535.183.01-0]\nRemv cuda-runtime-12-2 [12.2.2-1]\n"
                       "Remv cuda-12-2 [12.2.2-1]\n")
    with pytest.raises(InstallError) as err:
        foreign.purge_with_apt(runner, ["nvidia-driver-535"], lock_wait=30)
    assert err.value.exit_code == 6
    assert "would also remove cuda-12-2, cuda-runtime-12-2" in err.value.message
    assert len(runner.calls) == 1  # nothing purged
