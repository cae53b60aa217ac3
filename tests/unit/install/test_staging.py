"""Execute what was verified: the installer that runs is a private copy hashed as it was made."""

import hashlib
import os

import pytest

from agent.errors import InstallError, UnsafeHostPath
from agent.host.root import HostRoot
from agent.install import installer as inst
from agent.install import staging
from tests.fakes.runner import FakeRunner

REAL = b"#!/bin/sh\necho the verified installer\n"
EVIL = b"#!/bin/sh\necho pwned > /pwned\n"
SHA = hashlib.sha256(REAL).hexdigest()
RUN = f"/var/cache/grid-agent/{SHA}/d.run"


@pytest.fixture
def root(tmp_path):
    root = HostRoot(tmp_path)
    root.real_dir(f"/var/cache/grid-agent/{SHA}", create=True)
    root.path(RUN).write_bytes(REAL)
    return root


def swapping_runner(root):
    """Swaps the cache entry's bytes the moment the host command starts, then records the
    file the host would execute at that moment: the swapped payload would be what runs if
    the agent executed the cache entry by path (issue 12)."""
    runner = FakeRunner()
    runner.ran = []

    def swap_then_read(argv):
        root.path(RUN).write_bytes(EVIL)
        runner.ran.append(root.path(argv[1]).read_bytes())

    return runner.on(stdout="open\n", effect=swap_then_read)


def test_a_cache_entry_swapped_after_the_check_never_runs(root):
    runner = swapping_runner(root)
    inst.run_installer(root, runner, RUN, "open", timeout=10)
    assert os.listdir(root.path("/var/cache/grid-agent")) == [SHA]  # the copy is gone
    assert runner.ran == [REAL]


def test_the_recommendation_is_asked_of_a_private_copy_too(root):
    runner = swapping_runner(root)
    assert inst.recommended_module_type(root, runner, RUN, timeout=5) == "open"
    assert runner.ran == [REAL]


def test_the_private_copy_is_root_only(root):
    with staging.verified_copy(root, RUN) as private:
        path = root.path(private)
        assert path.read_bytes() == REAL
        assert os.stat(path.parent).st_mode & 0o777 == 0o700
        assert os.stat(path).st_mode & 0o777 == 0o500
        assert path.stat().st_uid == os.geteuid()
    assert not path.parent.exists()


def test_a_swapped_entry_is_caught_while_copying_and_nothing_runs(root):
    root.path(RUN).write_bytes(EVIL)  # swapped before the copy: the copy's hash catches it
    runner = swapping_runner(root)
    with pytest.raises(InstallError, match="no longer hashes to") as err:
        inst.run_installer(root, runner, RUN, "open", timeout=10)
    assert err.value.exit_code == 6 and runner.ran == []
    assert not root.path(RUN).exists()  # removed: the retry downloads and verifies again


def test_a_linked_or_foreign_cache_entry_is_refused(root, tmp_path):
    evil = tmp_path / "evil.run"
    evil.write_bytes(REAL)  # even the right bytes: a link is never followed
    root.path(RUN).unlink()
    root.path(RUN).symlink_to(evil)
    with pytest.raises(UnsafeHostPath, match=r"d\.run: it is a symbolic link"):
        inst.run_installer(root, swapping_runner(root), RUN, "open", timeout=10)
    root.path(RUN).unlink()
    root.path(RUN).write_bytes(REAL)
    os.chown(root.path(RUN), 1000, 1000)
    with pytest.raises(UnsafeHostPath, match="owned by uid 1000"):
        inst.run_installer(root, swapping_runner(root), RUN, "open", timeout=10)


def test_stages_left_by_a_killed_run_are_swept(root):
    os.mkdir(root.path("/var/cache/grid-agent/.exec-dead"), 0o700)
    (root.path("/var/cache/grid-agent/.exec-dead") / "d.run").write_bytes(REAL)
    assert staging.sweep_stages(root) == 1
    assert sorted(os.listdir(root.path("/var/cache/grid-agent"))) == [SHA]


def test_only_cache_entries_are_run(root):
    for path in ("/tmp/d.run", "/var/cache/grid-agent/d.run", "/var/cache/grid-agent/x/d.run"):
        with pytest.raises(InstallError, match="only a verified installer"):
            staging.cache_key(path)
    assert staging.cache_key(RUN) == (SHA, "d.run")
