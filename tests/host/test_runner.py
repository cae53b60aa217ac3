"""HostRunner with real processes: directly, and through a real nsenter into our own namespaces."""

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import structlog
from structlog.testing import LogCapture

from agent.errors import HostCommandError, HostCommandMissing, HostCommandTimeout, Terminated
from agent.host.runner import HostRunner
from agent.signals import terminate_on_signals

pytestmark = pytest.mark.host


def test_direct_run_captures_output_and_counts_calls():
    runner = HostRunner(pid=None)
    result = runner.run(["sh", "-c", "echo out; echo err >&2"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert runner.calls == 1


def test_environment_is_clean(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/libumockdev-preload.so")
    monkeypatch.setenv("PYTHONPATH", "/leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    env = HostRunner(pid=None).run(["env"]).stdout
    assert "LD_PRELOAD" not in env and "PYTHONPATH" not in env and "HTTPS_PROXY" not in env
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in env.splitlines()


def test_configured_extra_environment_is_passed():
    env = HostRunner(pid=None, env={"http_proxy": "http://mirror:3128"}).run(["env"]).stdout
    assert "http_proxy=http://mirror:3128" in env.splitlines()


def test_stdin_is_dev_null():
    assert HostRunner(pid=None).run(["cat"], timeout=5).stdout == ""


def test_failure_is_one_typed_error_with_the_facts():
    with pytest.raises(HostCommandError) as err:
        HostRunner(pid=None).run(["sh", "-c", "echo 'E: Unable to locate package' >&2; exit 100"])
    assert err.value.returncode == 100
    assert err.value.argv == ("sh", "-c", "echo 'E: Unable to locate package' >&2; exit 100")
    assert "E: Unable to locate package" in err.value.line()


def test_unchecked_failure_returns_the_result():
    assert HostRunner(pid=None).run(["false"], check=False).returncode == 1


@pytest.mark.parametrize("check", [True, False])
def test_missing_binary_is_named_whatever_check_says(check):
    with pytest.raises(HostCommandMissing) as err:
        HostRunner(pid=None).run(["grid-no-such-tool", "-x"], check=check)
    assert err.value.command == "grid-no-such-tool"
    assert err.value.message == ("`grid-no-such-tool` is not installed on the host "
                                 "(needed for `grid-no-such-tool -x`)")


def test_a_command_that_exits_127_itself_is_not_missing():
    with pytest.raises(HostCommandError) as err:
        HostRunner(pid=None).run(["sh", "-c", "exit 127"])
    assert err.value.returncode == 127


def test_no_nsenter_in_the_image_is_named():
    runner = HostRunner(pid=1, nsenter="/nonexistent/nsenter")
    with pytest.raises(HostCommandMissing, match=r"`/nonexistent/nsenter` is not installed "
                                                 r"in the agent's image \(needed for `true`\)"):
        runner.run(["true"])


def test_timeout_kills_the_whole_process_group():
    started = time.monotonic()
    with pytest.raises(HostCommandTimeout, match=r"timed out after 0\.3s"):
        HostRunner(pid=None).run(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.3)
    assert time.monotonic() - started < 5


@pytest.mark.skipif(os.geteuid() != 0, reason="nsenter needs root")
def test_real_nsenter_into_our_own_namespaces():
    runner = HostRunner(pid=os.getpid())
    result = runner.run(["sh", "-c", "echo $$; uname -n"])
    pid, node = result.stdout.split()
    assert int(pid) > 0 and node == os.uname().nodename


@pytest.mark.skipif(os.geteuid() != 0, reason="nsenter needs root")
@pytest.mark.parametrize("check", [True, False])
def test_a_command_not_on_the_hosts_path_through_nsenter_is_named(check):
    # nsenter's own "failed to execute CMD: No such file or directory", exit 127.
    with pytest.raises(HostCommandMissing) as err:
        HostRunner(pid=os.getpid()).run(["grid-no-such-tool"], check=check)
    assert err.value.command == "grid-no-such-tool"


@pytest.mark.skipif(os.geteuid() != 0, reason="nsenter needs root")
def test_through_nsenter_a_command_exiting_127_itself_is_an_answer():
    result = HostRunner(pid=os.getpid()).run(["sh", "-c", "echo nope >&2; exit 127"], check=False)
    assert (result.returncode, result.stderr) == (127, "nope\n")


# -- SIGTERM/SIGINT while a host command runs (issue 12 item 5) --------------------------


def _live_members(pgid):
    """Processes of the group that are not zombies (a killed orphan waits for init)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(stat.parent.name)
    return found


def _group_gone(pgid, within=2.0):
    deadline = time.monotonic() + within
    while _live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _live_members(pgid)


def _signal_self_when(signum, ready, give_up=60.0):
    """Signal this process once `ready()` holds: on an event (the command started and set
    its traps, the runner began its grace), never after a guessed delay that a loaded
    machine can outrun (a signal before the trap, or after the handlers are restored,
    would kill the test run itself). Returns a list that gets the monotonic time it was
    sent."""
    sent = []

    def wait_then_signal():
        deadline = time.monotonic() + give_up
        while not ready():
            if time.monotonic() > deadline:
                return  # never sent: the test fails on its own assertions
            time.sleep(0.01)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signum)

    threading.Thread(target=wait_then_signal, daemon=True).start()
    return sent


def _written(path):
    return lambda: path.exists() and path.read_text().strip() != ""


class _Watch(LogCapture):
    """Captures the agent's log entries; `on[name]()` runs when one is logged, right there
    (in the thread that logs it)."""

    def __init__(self, on):
        super().__init__()
        self.on = on

    def __call__(self, logger, method_name, event_dict):
        action = self.on.pop(event_dict.get("event"), None)
        if action is not None:
            action()
        return super().__call__(logger, method_name, event_dict)


@contextlib.contextmanager
def _watching(**on):
    """Like structlog.testing.capture_logs, with an action on a log event."""
    watch = _Watch(on)
    processors = structlog.get_config()["processors"]
    old = processors.copy()
    processors.clear()
    processors.append(watch)
    structlog.configure(processors=processors)
    try:
        yield watch
    finally:
        processors.clear()
        processors.extend(old)
        structlog.configure(processors=processors)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_commands_whole_process_group(tmp_path, signame):
    pidfile = tmp_path / "pid"
    runner = HostRunner(pid=None, stop_grace=5)
    sent = _signal_self_when(getattr(signal, signame), _written(pidfile))
    with pytest.raises(Terminated) as err, terminate_on_signals():
        runner.run(["sh", "-c", f"echo $$ > {pidfile}; sleep 60 & sleep 60 & wait"],
                   timeout=60)
    assert err.value.exit_code == 128 + getattr(signal, signame)
    assert time.monotonic() - sent[0] < 5  # at once, not after the 60 s of the command
    assert _group_gone(int(pidfile.read_text()))  # the shell and both sleeps


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    pidfile = tmp_path / "pid"
    runner = HostRunner(pid=None, stop_grace=1.0)
    # The pid is written after the trap: the signal never reaches a shell still starting.
    sent = _signal_self_when(signal.SIGTERM, _written(pidfile))
    with pytest.raises(Terminated), terminate_on_signals():
        runner.run(["sh", "-c", f"trap '' TERM; echo $$ > {pidfile}; sleep 60 & wait"],
                   timeout=60)
    assert 1.0 <= time.monotonic() - sent[0] < 5
    assert _group_gone(int(pidfile.read_text()))


def test_a_second_signal_during_the_cleanup_is_ignored(tmp_path):
    pidfile = tmp_path / "pid"
    runner = HostRunner(pid=None, stop_grace=1.5)
    # The second lands while the runner waits out the grace of a group that ignores
    # SIGTERM: sent by the runner's own thread as it logs that it stops the group.
    with _watching(host_command_stopping=lambda: os.kill(os.getpid(), signal.SIGTERM)) as watch:
        first = _signal_self_when(signal.SIGTERM, _written(pidfile))
        with pytest.raises(Terminated), terminate_on_signals():
            runner.run(["sh", "-c", f"trap '' TERM; echo $$ > {pidfile}; sleep 60 & wait"],
                       timeout=60)
    assert first and not watch.on  # both signals were sent
    events = [e["event"] for e in watch.entries]
    assert events.count("signal_received") == 1
    assert events.count("signal_ignored_during_cleanup") == 1
    assert events.index("signal_ignored_during_cleanup") < events.index("host_command_killed")
    # Handlers restored: the test process itself is not killed by what follows.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM))
