import fcntl
import os

import pytest
from structlog.testing import capture_logs
from tenacity.wait import wait_none

from agent.errors import PreflightError
from agent.install import packages as pk
from tests.fakes.runner import FakeRunner
from tests.fakes.tree import Tree

KVER = "6.8.0-1020-azure"
HEADERS = f"linux-headers-{KVER}"
OFFLINE_UPDATE = ("W: Failed to fetch http://azure.archive.ubuntu.com/ubuntu/dists/noble/InRelease"
                  "  Temporary failure resolving 'azure.archive.ubuntu.com'\n"
                  "W: Some index files failed to download. They have been ignored, or old ones "
                  "used instead.\n")
LOCKED = ("E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 "
          "(unattended-upgr)\nE: Unable to acquire the dpkg frontend lock "
          "(/var/lib/dpkg/lock-frontend), is another process using it?\n")


@pytest.fixture
def host(tmp_path):
    tree = Tree(tmp_path)
    tree.executable("/usr/bin/gcc")
    tree.executable("/usr/bin/make")
    tree.executable("/usr/bin/apt-get")
    return tree


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def ensure(host, runner, **kw):
    kw.setdefault("lock_wait", 5.0)
    kw.setdefault("sleep", Sleeps())
    return pk.ensure_build_deps(host.root, runner, KVER, retry_wait=wait_none(), **kw)


def installs_headers(host):
    def effect(argv):
        host.write(f"/usr/src/{HEADERS}/Makefile", "all:\n")
    return effect


def test_everything_present_runs_nothing(host):
    host.write(f"/usr/src/{HEADERS}/Makefile")
    runner = FakeRunner()
    with capture_logs() as logs:
        assert ensure(host, runner) is False
    assert runner.calls == []
    assert logs[-1]["changed"] is False


UPDATE = ("apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=5", "update")


def test_missing_headers_and_tools_are_installed_with_the_lock_timeout(host):
    host.root.path("/usr/bin/gcc").unlink()
    assert pk.missing_packages(host.root, KVER) == [HEADERS, "gcc"]

    def install(argv):
        installs_headers(host)(argv)
        host.executable("/usr/bin/gcc")

    runner = FakeRunner().on(*UPDATE).on("apt-get", effect=install)
    with capture_logs() as logs:
        assert ensure(host, runner) is True
    assert runner.calls == [
        list(UPDATE),
        ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=5", "install",
         "--no-install-recommends", HEADERS, "gcc"]]
    assert runner.envs[1] == {"DEBIAN_FRONTEND": "noninteractive"}
    assert logs[-1]["event"] == "build_deps_installed" and logs[-1]["changed"] is True


def test_offline_is_a_distinct_error_naming_network_mirror_proxy(host):
    runner = (FakeRunner().on(*UPDATE, stdout=OFFLINE_UPDATE)
              .on("apt-get", rc=100, stderr=f"E: Unable to locate package {HEADERS}\n"))
    sleeps = Sleeps()
    with pytest.raises(PreflightError, match=r"cannot reach the package mirror \(network, "
                                             r"mirror or proxy\)") as err:
        ensure(host, runner, sleep=sleeps)
    assert f"E: Unable to locate package {HEADERS}" in err.value.message
    assert "proxy" in err.value.remedy and err.value.exit_code == 4
    assert len(runner.calls) == 2 * pk.APT_ATTEMPTS  # retried as transient
    assert len(sleeps) == pk.APT_ATTEMPTS - 1


def test_a_package_that_does_not_exist_is_not_retried(host):
    runner = (FakeRunner().on(*UPDATE)
              .on("apt-get", rc=100, stdout="Reading package lists...\n",
                  stderr=f"E: Unable to locate package {HEADERS}\n"
                         f"E: Couldn't find any package by glob '{HEADERS}'\n"))
    with pytest.raises(PreflightError) as err:
        ensure(host, runner)
    assert "cannot reach" not in err.value.message
    assert f"E: Couldn't find any package by glob '{HEADERS}'" in err.value.message
    assert len(runner.calls) == 2


def test_transient_failure_then_success(host):
    runner = (FakeRunner().on(*UPDATE)
              .on("apt-get", rc=100, times=1, stderr="E: Failed to fetch http://x/y.deb  "
                                                     "Connection timed out\n")
              .on("apt-get", effect=installs_headers(host)))
    with capture_logs() as logs:
        assert ensure(host, runner) is True
    assert [e["event"] for e in logs].count("apt_retry") == 1


def test_apt_lock_errors_retry_until_the_lock_is_free(host):
    runner = (FakeRunner().on(*UPDATE)
              .on("apt-get", rc=100, times=4, stderr=LOCKED)
              .on("apt-get", effect=installs_headers(host)))
    # More lock failures than APT_ATTEMPTS: the lock keeps retrying within the wait.
    assert ensure(host, runner) is True
    assert len(runner.calls) == 10


def test_apt_lock_errors_past_the_wait_give_up(host):
    runner = FakeRunner().on("apt-get", rc=100, stderr=LOCKED)
    with pytest.raises(PreflightError, match="dpkg lock stayed held") as err:
        ensure(host, runner, lock_wait=0.0)
    assert "GRID_AGENT_DPKG_LOCK_WAIT" in err.value.remedy


def test_installed_but_still_missing_is_an_error(host):
    runner = FakeRunner().on("apt-get")
    with pytest.raises(PreflightError, match=f"apt-get succeeded but {HEADERS} is still missing"):
        ensure(host, runner)


class HeldLock:
    """A real POSIX lock on the host's lock-frontend, held by a child process (as apt does)."""

    def __init__(self, path):
        self.to_child, self.to_parent = os.pipe(), os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child: lock, tell the parent, wait to be told to go
            fd = os.open(path, os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(self.to_parent[1], b"x")
            os.read(self.to_child[0], 1)
            os._exit(0)
        os.read(self.to_parent[0], 1)

    def release(self, *_):
        if self.pid:
            os.write(self.to_child[1], b"x")
            os.waitpid(self.pid, 0)
            self.pid = 0


@pytest.fixture
def held_lock(host):
    lock = HeldLock(host.write("/var/lib/dpkg/lock-frontend"))
    yield lock
    lock.release()


def test_lock_holder_is_seen_through_the_root(host, held_lock):
    assert pk.dpkg_lock_holder(host.root) == held_lock.pid
    held_lock.release()
    assert pk.dpkg_lock_holder(host.root) is None


def test_no_lock_files_means_no_holder(tmp_path):
    assert pk.dpkg_lock_holder(Tree(tmp_path).root) is None


def test_lock_wait_is_bounded_and_names_the_holder(host, held_lock):
    sleeps = Sleeps()
    with pytest.raises(PreflightError, match=rf"still held \(pid {held_lock.pid}\) after 3s"):
        pk.wait_for_dpkg_lock(host.root, 3.0, sleep=sleeps, clock=iter(range(100)).__next__)
    assert sleeps == [1.0, 1.0]


def test_lock_wait_returns_once_released(host, held_lock):
    def sleep(seconds):
        if len(sleeps) == 2:
            held_lock.release()
        sleeps.append(seconds)

    sleeps = []
    waited = pk.wait_for_dpkg_lock(host.root, 60.0, sleep=sleep, clock=iter(range(10)).__next__)
    assert sleeps == [1.0, 1.0, 1.0] and waited == 4


def test_old_apt_failing_on_the_lock_waits_for_it_bounded(host, held_lock):
    # apt < 1.9 ignores DPkg::Lock::Timeout: it fails at once, and our own wait takes over.
    runner = FakeRunner().on("apt-get", rc=100, stderr=LOCKED)
    clock = iter(range(100)).__next__
    with pytest.raises(PreflightError, match=r"dpkg lock is still held \(pid \d+\)"):
        pk.wait_for_dpkg_lock(host.root, 3.0, sleep=Sleeps(), clock=clock)
    with pytest.raises(PreflightError, match="the dpkg lock stayed held"):
        ensure(host, runner, lock_wait=0.0)
    assert len(runner.calls) == 2  # one update + install attempt: the wait is spent


def test_old_apt_retries_once_the_lock_is_released(host, held_lock):
    runner = (FakeRunner().on(*UPDATE).on("apt-get", rc=100, times=1, stderr=LOCKED)
              .on("apt-get", effect=installs_headers(host)))
    assert ensure(host, runner, sleep=held_lock.release) is True
    assert len(runner.calls) == 4
