"""The host door's write side against real files: each attack of issue 12 is refused.

Every test here fails if its hole is reintroduced (a link followed, a foreign or
writable agent directory accepted, a write landing outside the root).
"""

import os
import stat

import pytest

from agent.driver.record import RECORD_PATH, remove_record
from agent.errors import DownloadError, InstallError, UnsafeHostPath
from agent.host.lock import LOCK_PATH, host_lock
from agent.host.root import HostRoot
from agent.install import cache
from agent.install.uninstall import purge_cache

SECRET = "ServerAddress=licence.example\nClientConfigToken=s3cr3t\n"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "host").mkdir()
    return HostRoot(tmp_path / "host")


@pytest.fixture
def outside(tmp_path):
    """A directory beside the root that no write may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "precious").write_text("keep me\n")
    return path


def mode(path):
    return stat.S_IMODE(path.lstat().st_mode)


def test_agent_directories_are_created_root_only(root):
    root.write_file(RECORD_PATH, "{}\n")
    cache.cache_dir(root, create=True)
    with host_lock(root, wait=False):
        pass
    for owned in ("/var/lib/grid-agent", "/var/cache/grid-agent", "/run/grid-agent"):
        path = root.path(owned)
        assert path.is_dir() and not path.is_symlink() and mode(path) == 0o700, owned
        assert path.stat().st_uid == os.geteuid()
    assert mode(root.path(LOCK_PATH)) == 0o600
    assert mode(root.path("/var/lib")) == 0o755  # host-owned parents: the usual mode


def test_a_lock_linked_to_a_host_file_is_refused_and_the_file_untouched(root):
    root.path("/etc").mkdir()
    root.path("/etc/shadow").write_text("root:x:0:\n")
    root.path("/run/grid-agent").mkdir(parents=True, mode=0o700)
    root.path(LOCK_PATH).symlink_to("/etc/shadow")
    with pytest.raises(UnsafeHostPath, match="refusing /run/grid-agent/lock: it is a symbolic"):
        with host_lock(root, wait=False):
            pass
    assert root.path("/etc/shadow").read_text() == "root:x:0:\n"


@pytest.mark.parametrize("owned", ["/var/lib/grid-agent", "/run/grid-agent"])
def test_a_linked_agent_directory_is_refused(root, outside, owned):
    root.path(owned).parent.mkdir(parents=True)
    root.path(owned).symlink_to(outside)
    with pytest.raises(UnsafeHostPath, match=f"refusing {owned}: it is a symbolic link") as err:
        root.write_file(f"{owned}/state.json", "{}")
    assert err.value.exit_code == 6 and f"rm {owned}" in err.value.line()
    assert sorted(os.listdir(outside)) == ["precious"]


def test_a_linked_lock_directory_is_refused(root, outside):
    root.path("/run").mkdir()
    root.path("/run/grid-agent").symlink_to(outside)
    with pytest.raises(UnsafeHostPath, match="refusing /run/grid-agent: it is a symbolic link"):
        with host_lock(root, wait=False):
            pass
    assert sorted(os.listdir(outside)) == ["precious"]


def test_a_foreign_or_writable_agent_directory_is_refused(root):
    state = root.path("/var/lib/grid-agent")
    state.mkdir(parents=True, mode=0o700)
    os.chown(state, 1000, 1000)
    with pytest.raises(UnsafeHostPath, match="owned by uid 1000, not root"):
        root.write_file(RECORD_PATH, "{}")
    os.chown(state, 0, 0)
    state.chmod(0o777)
    with pytest.raises(UnsafeHostPath, match=r"group- or world-writable \(mode 777\)"):
        root.write_file(RECORD_PATH, "{}")
    state.chmod(0o755)
    root.write_file(RECORD_PATH, "{}")  # an operator's 0755 is fine: only writers matter
    assert remove_record(root) is True and remove_record(root) is False


def test_a_foreign_file_inside_an_agent_directory_is_refused(root):
    root.real_dir("/run/grid-agent", create=True)
    root.path(LOCK_PATH).write_text("")
    os.chown(root.path(LOCK_PATH), 1000, 1000)
    with pytest.raises(UnsafeHostPath, match="lock: it is owned by uid 1000"):
        with host_lock(root, wait=False):
            pass


def test_an_unsafe_cache_is_a_download_error(root, outside):
    root.path("/var/cache").mkdir(parents=True)
    root.path("/var/cache/grid-agent").symlink_to(outside)
    with pytest.raises(DownloadError, match="grid-agent: it is a symbolic link") as err:
        cache.cache_dir(root, create=True)
    assert err.value.exit_code == 5
    with pytest.raises(DownloadError):
        cache.lookup(root, "ab" * 32, "d.run")


def test_purge_through_a_linked_cache_never_empties_the_target(root, outside):
    root.path("/var/cache").mkdir(parents=True)
    root.path("/var/cache/grid-agent").symlink_to(outside)
    with pytest.raises(InstallError, match="it is a symbolic link"):
        purge_cache(root)
    assert (outside / "precious").read_text() == "keep me\n"


def test_purge_removes_links_inside_the_cache_not_their_targets(root, outside):
    cache_dir = cache.cache_dir(root, create=True)
    (cache_dir / "entry").symlink_to(outside)
    (cache_dir / "file").symlink_to(outside / "precious")
    (cache_dir / ("ab" * 32)).mkdir()
    (cache_dir / ("ab" * 32) / "d.run").write_text("x")
    (cache_dir / ("ab" * 32) / "up").symlink_to(outside)
    assert purge_cache(root) is True
    assert os.listdir(cache_dir) == []
    assert sorted(os.listdir(outside)) == ["precious"]


@pytest.mark.parametrize("link", ["ABSOLUTE", "../../../.."])
def test_links_in_host_directories_resolve_inside_the_root(root, outside, link):
    root.path("/etc").mkdir()
    # An absolute link is read as the host reads it: relative to the host's own /.
    root.path("/etc/modprobe.d").symlink_to(str(outside) if link == "ABSOLUTE" else link)
    root.write_file("/etc/modprobe.d/blacklist-nouveau.conf", "blacklist nouveau\n")
    assert sorted(os.listdir(outside)) == ["precious"]
    inside = root.resolve("/etc/modprobe.d/blacklist-nouveau.conf")
    assert inside.read_text() == "blacklist nouveau\n"
    assert root.root in inside.parents


def test_write_file_replaces_a_link_instead_of_writing_through_it(root, outside):
    root.path("/run/nvidia/validations").mkdir(parents=True)
    marker = root.path("/run/nvidia/validations/.driver-ctr-ready")
    marker.symlink_to(outside / "precious")
    root.write_file("/run/nvidia/validations/.driver-ctr-ready", "x: true\n")
    assert not marker.is_symlink() and marker.read_text() == "x: true\n"
    assert (outside / "precious").read_text() == "keep me\n"
    assert root.read_nofollow("/etc/none") is None


def test_dotdot_is_refused_where_the_agent_writes(root):
    with pytest.raises(UnsafeHostPath, match=r"`\.\.` is not allowed"):
        root.write_file("/var/lib/grid-agent/../../etc/passwd", "x")
