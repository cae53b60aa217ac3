import os
import stat

import pytest

from agent.errors import LockHeldError
from agent.host.files import write_atomic, write_if_changed
from agent.host.lock import LOCK_PATH, host_lock
from agent.host.root import HostRoot


def test_write_atomic_creates_parents_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a/b/file"
    write_atomic(target, "one")
    write_atomic(target, b"two", mode=0o600)
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["file"]


def test_write_atomic_failure_keeps_old_content_and_no_temp(tmp_path):
    target = tmp_path / "file"
    write_atomic(target, "old")
    with pytest.raises(TypeError):
        write_atomic(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file"]


def test_second_holder_fails_at_once_naming_the_first(tmp_path):
    root = HostRoot(tmp_path)
    with host_lock(root, wait=False):
        assert (tmp_path / LOCK_PATH.lstrip("/")).read_text().strip() == str(os.getpid())
        with pytest.raises(LockHeldError, match=f"pid {os.getpid()}") as err:
            with host_lock(root, wait=False):
                pass
        assert err.value.exit_code == 8


def test_waiting_holder_gives_up_after_its_timeout(tmp_path):
    root = HostRoot(tmp_path)
    with host_lock(root, wait=False), pytest.raises(LockHeldError):
        with host_lock(root, wait=True, timeout=0.3):
            pass


def test_lock_is_free_again_after_release(tmp_path):
    root = HostRoot(tmp_path)
    with host_lock(root, wait=False):
        pass
    with host_lock(root, wait=False):
        pass


def test_write_if_changed_reports_whether_it_wrote(tmp_path):
    root, target = HostRoot(tmp_path), tmp_path / "etc/modprobe.d/x.conf"
    assert write_if_changed(root, "/etc/modprobe.d/x.conf", "a\n") is True
    mtime = target.stat().st_mtime_ns
    assert write_if_changed(root, "/etc/modprobe.d/x.conf", "a\n") is False
    assert target.stat().st_mtime_ns == mtime
    assert write_if_changed(root, "/etc/modprobe.d/x.conf", "b\n") is True
    assert target.read_text() == "b\n"
