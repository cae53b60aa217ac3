"""The AgentError tree: each class carries its exit code and a remedy sentence."""

from __future__ import annotations

from collections.abc import Sequence


class AgentError(Exception):
    """An expected failure: one clear line for the person, a distinct exit code."""

    exit_code = 1
    remedy = ""

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if remedy is not None:
            self.remedy = remedy

    def line(self) -> str:
        """The one line shown to a person and written to the termination log."""
        return f"{self.message}; {self.remedy}" if self.remedy else self.message


class ConfigError(AgentError):
    """Usage or configuration error."""

    exit_code = 2
    remedy = "fix the flag or GRID_AGENT_* variable and retry"


class NotATargetNode(AgentError):
    """No target PCI function on this node (`detect` only)."""

    exit_code = 3
    remedy = "check the node pool labels; this node has no RTX PRO 6000 BSE function"


class PreflightError(AgentError):
    exit_code = 4


class DownloadError(AgentError):
    exit_code = 5


class InstallError(AgentError):
    exit_code = 6


class VerifyError(AgentError):
    exit_code = 7


class LockHeldError(AgentError):
    exit_code = 8
    remedy = "another grid-agent holds the lock; wait for it or pass --wait-lock"


class InstallerRunning(LockHeldError):
    """An NVIDIA installer from an earlier run (or a person) is still running on the host."""

    remedy = ("wait for it to finish, or stop it on the node (kill the PID named), "
              "then retry")


class UnhealthyError(AgentError):
    exit_code = 9


class Terminated(AgentError):
    """SIGTERM or SIGINT arrived: the run stopped where it was (exit 128 + the signal)."""

    remedy = "the run was stopped; the next run starts over from what is on the host"

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"stopped by {name}")
        self.exit_code = 128 + signum
        self.signum = signum


class HostCommandError(AgentError):
    """A host command failed; steps normally wrap this into their own class."""

    exit_code = 1

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        *,
        reason: str | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        why = reason or f"exited {returncode}"
        tail = last_lines(stderr or stdout, 3)
        detail = f": {tail}" if tail else ""
        super().__init__(f"host command `{' '.join(self.argv)}` {why}{detail}")


class HostCommandTimeout(HostCommandError):
    """A host command ran past its timeout and was killed."""


def last_lines(text: str, count: int) -> str:
    """The last non-empty lines of a command's output, joined for one log line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])
