import pytest

from agent.host.root import HostRoot


@pytest.fixture
def host(tmp_path):
    (tmp_path / "usr/src/linux-headers-6.8.0-1017-azure").mkdir(parents=True)
    (tmp_path / "lib/modules/6.8.0-1017-azure").mkdir(parents=True)
    # Absolute, as on a real host: resolving it against the agent's / would miss.
    (tmp_path / "lib/modules/6.8.0-1017-azure/build").symlink_to(
        "/usr/src/linux-headers-6.8.0-1017-azure")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=ubuntu\n")
    return HostRoot(tmp_path)


def test_path_is_lexical(host, tmp_path):
    assert host.path("/etc/os-release") == tmp_path / "etc/os-release"
    assert host.path("/") == tmp_path


def test_absolute_symlink_resolves_inside_the_root(host, tmp_path):
    resolved = host.resolve("/lib/modules/6.8.0-1017-azure/build")
    assert resolved == tmp_path / "usr/src/linux-headers-6.8.0-1017-azure"
    assert host.exists("/lib/modules/6.8.0-1017-azure/build")


def test_relative_and_dotdot_links_never_escape(host, tmp_path):
    (tmp_path / "etc/escape").symlink_to("../../../../../../etc")
    assert host.resolve("/etc/escape") == tmp_path / "etc"
    assert host.resolve("/../../etc/os-release") == tmp_path / "etc/os-release"


def test_symlink_loop_is_an_oserror_and_not_existing(host, tmp_path):
    (tmp_path / "a").symlink_to("/b")
    (tmp_path / "b").symlink_to("/a")
    with pytest.raises(OSError, match="too many levels"):
        host.resolve("/a")
    assert not host.exists("/a")


def test_read_text_through_links_and_defaults(host, tmp_path):
    (tmp_path / "etc/alias").symlink_to("/etc/os-release")
    assert host.read_text("/etc/alias") == "ID=ubuntu\n"
    assert host.read_text("/etc/missing") is None
    assert host.read_text("/etc/missing", "") == ""


def test_which_finds_executables_on_the_host_path_through_links(host, tmp_path):
    (tmp_path / "usr/sbin").mkdir(parents=True)
    tool = tmp_path / "usr/sbin/dkms"
    tool.write_text("#!/bin/sh\n")
    assert host.which("dkms") is None  # not executable yet
    tool.chmod(0o755)
    assert host.which("dkms") == tool
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    (tmp_path / "usr/local/bin/dkms").symlink_to("/usr/sbin/dkms")
    assert host.which("dkms") == tool  # an absolute host link, resolved inside the root
    assert host.which("apt-get") is None


def test_host_path_is_the_inverse_of_path(host, tmp_path):
    assert host.host_path(host.path("/var/cache/grid-agent/a.run")) == "/var/cache/grid-agent/a.run"
    assert host.host_path(tmp_path) == "/"
    with pytest.raises(ValueError, match="not under the host root"):
        host.host_path("/elsewhere/a.run")
