"""The reboot sentinel and its .pkgs with real files, through a host root whose /var/run
links to /run (absolute, as on Ubuntu): written inside the root, cleared only if ours."""

import pytest

from agent.host.root import HostRoot
from agent.install import upgrade as staging
from agent.values import reboot_sentinel


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


STAGED = {"version": "580.126.09-grid-azure", "from_version": "580.105.08-grid-azure",
          "sentinel": "/var/run/reboot-required",
          "reason": "the loaded NVIDIA driver is in use (pid 4242 (cuda-app))"}


def test_the_staged_line_names_the_pin_why_the_sentinel_and_the_coordinator():
    line = staging.staged_line(STAGED)
    assert line.startswith("upgrade to 580.126.09-grid-azure (from 580.105.08-grid-azure) "
                           "staged, waiting for reboot: the loaded NVIDIA driver is in use")
    assert "/var/run/reboot-required is written" in line and "reboot coordinator" in line
    assert "\n" not in line


def test_a_long_reason_is_cut_so_the_line_stays_within_the_kubelets_4096_bytes():
    many = "; ".join(f"pid {n} (cuda-app)" for n in range(2000))
    line = staging.staged_line({**STAGED, "reason": many})
    assert len(line.encode()) < 4096 and line.endswith("installs from the cache")


def busy(tmp_path):
    from tests.fakes.tree import Tree

    host = Tree(tmp_path)
    host.module("nvidia", refcnt=1, version="580.105.08")
    host.process(4242, "cuda-app", ("/dev/nvidia0",))
    return host


def test_sigterm_in_the_wait_stops_with_143_and_a_line_that_still_says_staged(tmp_path):
    from agent.driver.sections import read_section, write_section
    from agent.errors import Terminated

    host = busy(tmp_path)
    write_section(host.root, "staged", STAGED)

    def sleep(_seconds):
        raise Terminated(15, "SIGTERM")  # what agent/signals.py raises in the main thread

    ticks = iter([100.0, 107.0])
    waiter = staging.Waiter(host.root, interval=60, sleep=sleep, clock=lambda: next(ticks))
    with pytest.raises(staging.WaitStopped) as stopped:
        waiter.wait(STAGED)
    assert stopped.value.exit_code == 143
    line = stopped.value.line()
    assert line.startswith("stopped by SIGTERM after 7 s: upgrade to 580.126.09-grid-azure "
                           "(from 580.105.08-grid-azure) staged, waiting for reboot")
    assert "state.json keeps `staged`" in line
    left = read_section(host.root, "staged")  # the staging is kept for the reboot
    assert left["version"] == STAGED["version"] and "4242 (cuda-app)" in left["blocked_by"][0]


def test_a_signal_before_the_first_check_still_names_the_staged_pin(tmp_path):
    from agent.errors import Terminated

    host = busy(tmp_path)

    def clock():
        raise Terminated(2, "SIGINT")

    with pytest.raises(staging.WaitStopped) as stopped:
        staging.Waiter(host.root, interval=60, clock=clock).wait(STAGED)
    assert stopped.value.exit_code == 130
    assert stopped.value.line().startswith("stopped by SIGINT: upgrade to 580.126.09")


def test_the_waits_status_is_written_under_the_host_lock_and_skipped_while_it_is_held(
        tmp_path):
    from agent.driver.sections import read_section, write_section
    from agent.errors import Terminated
    from agent.host.lock import host_lock

    host = busy(tmp_path)
    write_section(host.root, "staged", STAGED)
    rounds = []

    def sleep(_seconds):
        rounds.append(read_section(host.root, "staged"))
        if len(rounds) == 2:
            raise Terminated(15, "SIGTERM")

    ticks = iter([100.0, 107.0, 170.0])
    waiter = staging.Waiter(host.root, interval=60, sleep=sleep, clock=lambda: next(ticks))
    with host_lock(host.root, wait=False), pytest.raises(staging.WaitStopped):
        waiter.wait(STAGED)  # a debug-node run holds the lock: state.json is its
    assert [r.get("waiting_seconds") for r in rounds] == [None, None]
    rounds.clear()
    ticks = iter([100.0, 107.0, 170.0])
    with pytest.raises(staging.WaitStopped):
        waiter.wait(STAGED)
    assert [r.get("waiting_seconds") for r in rounds] == [7, 70]
