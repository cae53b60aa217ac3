"""HostRunner with real processes: directly, and through a real nsenter into our own namespaces."""

import os
import time

import pytest

from agent.errors import HostCommandError, HostCommandTimeout
from agent.host.runner import HostRunner

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


def test_missing_binary_is_a_host_command_error():
    with pytest.raises(HostCommandError, match="could not start"):
        HostRunner(pid=None).run(["/nonexistent/tool"])


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
