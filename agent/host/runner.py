"""HostRunner: the only place that starts processes, in the host's namespaces."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from agent.errors import HostCommandError, HostCommandMissing, HostCommandTimeout
from agent.host.root import HOST_PATH

log = structlog.get_logger(__name__)

# The namespaces nsenter joins; not `user` (we are already root) nor `cgroup`.
NSENTER_FLAGS = ("--mount", "--uts", "--ipc", "--net", "--pid")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: never leak the container's LD_PRELOAD, PYTHONPATH or proxies."""
    env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class HostRunner:
    """Runs argv on the host: through `nsenter --target PID` or, with pid None, directly."""

    pid: int | None = 1
    timeout: float = 120.0
    env: Mapping[str, str] = field(default_factory=dict)
    nsenter: str = "nsenter"
    stop_grace: float = 10.0  # SIGTERM to SIGKILL of a command stopped with the agent
    calls: int = 0  # how many host processes this runner started (benchmarks read it)

    def argv_for(self, argv: Sequence[str]) -> list[str]:
        if self.pid is None:
            return list(argv)
        return [self.nsenter, "--target", str(self.pid), *NSENTER_FLAGS, "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run to completion; raise HostCommandError on non-zero exit when `check`.

        A command that is not installed raises HostCommandMissing whatever `check` says:
        a caller that may do without it catches that by name.
        """
        limit = self.timeout if timeout is None else timeout
        self.calls += 1
        started = time.monotonic()
        proc = self._start(argv, limit, env)
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise HostCommandTimeout(
                argv, None, out, err, reason=f"timed out after {limit:g}s"
            ) from None
        except BaseException:
            # The agent is stopping (Terminated, a bug): the command's whole process group
            # goes with it, never left running on the host with the lock released.
            stop_group(proc, self.stop_grace)
            raise
        if self.pid is not None and _nsenter_not_found(proc.returncode, err, argv[0]):
            raise HostCommandMissing(argv[0], argv)
        result = CommandResult(tuple(argv), proc.returncode, out, err, time.monotonic() - started)
        if check and not result.ok:
            raise HostCommandError(argv, result.returncode, out, err)
        return result

    def _start(self, argv: Sequence[str], limit: float,
               env: Mapping[str, str] | None) -> subprocess.Popen[str]:
        """Popen argv on the host; a missing command (or nsenter) is HostCommandMissing."""
        full = self.argv_for(argv)
        log.debug("host_command", argv=full, timeout=limit)
        try:
            return subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=clean_env({**self.env, **(env or {})}),
                start_new_session=True,  # so a timeout kills nsenter's forked child too
                text=True,
                errors="replace",
            )
        except FileNotFoundError as exc:
            if self.pid is None:
                raise HostCommandMissing(argv[0], argv) from exc
            raise HostCommandMissing(self.nsenter, argv, where="in the agent's image") from exc
        except OSError as exc:
            raise HostCommandError(argv, None, reason=f"could not start: {exc.strerror}") from exc


def _nsenter_not_found(returncode: int, stderr: str, command: str) -> bool:
    """nsenter's own report that it found no `command` in the target's mount namespace.

    util-linux's errexec(): `nsenter: failed to execute CMD: No such file or directory`,
    exit 127 (EX_EXEC_ENOENT); a command that itself exits 127 does not say this.
    """
    return returncode == 127 and (
        f"failed to execute {command}: No such file or directory" in stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen[str], grace: float) -> None:
    """SIGTERM the command's process group, wait up to `grace` for all of it, then SIGKILL.

    The group, not the process: nsenter forks the command, the `.run` forks
    nvidia-installer, which forks make and the compilers.
    """
    log.warning("host_command_stopping", argv=proc.args, pid=proc.pid, grace_seconds=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            break
        time.sleep(0.05)
    else:
        log.warning("host_command_killed", argv=proc.args, pid=proc.pid)
    _kill_group(proc)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=grace)
