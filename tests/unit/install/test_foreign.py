import pytest

from agent.driver.foreign import AKS_PREBAKE_MARKER, DPKG_STATUS, ForeignDriver, find_foreign
from agent.errors import InstallError
from agent.host.root import HostRoot
from agent.install import foreign
from tests.fakes.foreign import FOREIGN, KERNEL, OTHER, PIN, STATUS, cuda_driver, stanza, write
from tests.fakes.runner import FakeRunner


def ok_runner():
    """Every host command succeeds."""
    return FakeRunner().on()


@pytest.fixture
def root(tmp_path):
    return HostRoot(tmp_path)


@pytest.fixture
def cuda_host(root):
    return cuda_driver(root)


def test_a_clean_host_has_none(root):
    write(root, DPKG_STATUS, stanza("bash"))
    assert not find_foreign(root, PIN)
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
        write(cuda_host, DPKG_STATUS, "\n".join(
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
    assert "libnvidia-container1" in cuda_host.read_text(DPKG_STATUS)


def test_with_dkms_it_is_dkms_removed_before_the_purge_takes_its_source(cuda_host):
    write(cuda_host, "/usr/sbin/dkms", "#!/bin/sh\n", 0o755)
    order = []
    runner = FakeRunner().on("dkms", effect=order.append).on()

    def purge(pkgs):
        order.append(["purge", *pkgs])
        write(cuda_host, DPKG_STATUS, stanza("bash"))

    assert foreign.remove_foreign(cuda_host, runner, PIN, unload=lambda *a, **k: True,
                                  purge=purge)
    assert order[0] == ["dkms", "remove", f"nvidia/{OTHER}", "--all"]
    assert order[1] == ["purge", *FOREIGN]


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
    write(root, AKS_PREBAKE_MARKER, "")
    write(root, "/usr/bin/lib64/libnvidia-ml.so.1", "")
    write(root, "/etc/ld.so.conf.d/nvidia.conf", "/usr/bin/lib64\n")
    write(root, "/var/lib/dkms/nvidia/550.144.03/source", "")
    runner = ok_runner()
    assert foreign.remove_foreign(root, runner, PIN, unload=lambda *a, **k: False,
                                  purge=lambda pkgs: pytest.fail("no packages to purge"))
    for gone in ("/usr/bin/lib64", "/etc/ld.so.conf.d/nvidia.conf", AKS_PREBAKE_MARKER,
                 "/var/lib/dkms/nvidia/550.144.03"):
        assert not root.exists(gone), gone
    assert ["ldconfig"] in runner.calls


def test_removal_says_what_remove_foreign_would_do(cuda_host):
    assert foreign.removal(find_foreign(cuda_host, PIN)) == (
        "unload its module, remove its DKMS trees and modules, apt-get purge its packages "
        "when unused, else exit 6 naming it and its users")
    assert foreign.removal(ForeignDriver(aks_prebake=True)) == (
        "unload its module, drop the AKS prebake's leftovers when unused, else exit 6 naming "
        "it and its users")


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
