"""The host's installers found in its /proc (a tree on disk, as the host shows it)."""

import pytest

from agent.host.procs import is_installer, running_installers
from agent.host.root import HostRoot


def proc(root, pid, argv, state="S"):
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "stat").write_text(f"{pid} (x y) {state} 1 {pid} {pid} 0 -1\n")


@pytest.mark.parametrize(("argv", "found"), [
    (["/tmp/makeself.X/nvidia-installer", "--silent"], True),
    (["sh", "/var/cache/grid-agent/ab/NVIDIA-Linux-x86_64-580.105.08-grid-azure.run", "-s"],
     True),
    (["/bin/sh", "./NVIDIA-Linux-x86_64-595.58.03-grid-azure.run"], True),
    (["sh", "/var/cache/grid-agent/.exec-1/mirror.run"], True),
    (["/usr/bin/python3", "-m", "agent", "install"], False),
    (["sh", "/home/u/other.run"], False),
    (["bash", "-c", "echo nvidia-installer"], False),
    ([], False),
])
def test_is_installer(argv, found):
    assert is_installer(argv) is found


def test_running_installers_skips_zombies_and_others(tmp_path):
    proc(tmp_path, 40, ["nvidia-installer", "--silent"])
    proc(tmp_path, 7, ["sh", "./NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"])
    proc(tmp_path, 9, ["nvidia-installer"], state="Z")
    proc(tmp_path, 10, ["sleep", "60"])
    (tmp_path / "proc" / "self").mkdir()
    assert [pid for pid, _ in running_installers(HostRoot(tmp_path))] == [7, 40]


def test_no_proc_means_none(tmp_path):
    assert running_installers(HostRoot(tmp_path)) == []


def test_refusal_names_the_pid_and_is_exit_8(tmp_path):
    from agent.errors import InstallerRunning
    from agent.host.procs import refuse_running_installer

    refuse_running_installer(HostRoot(tmp_path))  # none: no error
    proc(tmp_path, 4242, ["sh", "./NVIDIA-Linux-x86_64-580.105.08-grid-azure.run", "-s"])
    with pytest.raises(InstallerRunning, match="pid 4242") as err:
        refuse_running_installer(HostRoot(tmp_path))
    assert err.value.exit_code == 8


def test_uninstall_refuses_under_a_running_installer(tmp_path):
    from agent.errors import InstallerRunning
    from agent.install.uninstall import uninstall
    from tests.fakes.kit import FakeNode, settings

    node = FakeNode(HostRoot(tmp_path))
    proc(tmp_path, 77, ["/tmp/x/nvidia-installer", "--silent"])
    with pytest.raises(InstallerRunning):
        uninstall(settings(), node.root, object(), node.kit(), purge=False)
    assert node.calls == []
