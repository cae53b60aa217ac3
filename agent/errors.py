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


# The Debian/Ubuntu package that ships a command the agent runs, for the remedy.
COMMAND_PACKAGES = {
    "kill": "procps", "ps": "procps", "pgrep": "procps",
    "rmmod": "kmod", "modprobe": "kmod", "modinfo": "kmod",
    "nsenter": "util-linux", "dmesg": "util-linux", "mount": "mount", "umount": "mount",
    "update-initramfs": "initramfs-tools", "mokutil": "mokutil", "apt-get": "apt",
}


class HostCommandMissing(AgentError):
    """A command the agent runs is not installed (not on the host's PATH, or no nsenter).

    Deliberately not a HostCommandError: the handlers that turn a failing command into
    their step's diagnosis ("reboot required: rmmod failed") must not see it. The step that
    ran it turns it into its own class, naming the command (`for_step`).
    """

    exit_code = 1

    def __init__(self, command: str, argv: Sequence[str], *, where: str = "on the host") -> None:
        self.command = command
        self.argv = tuple(argv)
        package = COMMAND_PACKAGES.get(command)
        fix = f"install {package} {where}" if package else f"install `{command}` {where}"
        super().__init__(
            f"`{command}` is not installed {where} (needed for `{' '.join(self.argv)}`)",
            remedy=fix)

    def for_step(self, step: str, cls: type[AgentError]) -> AgentError:
        """The same line as the step's own error class (its exit code)."""
        return cls(f"{step}: {self.message}", remedy=self.remedy)


OK, BUG, INTERRUPTED = 0, 1, 130  # success; an unexpected exception; click's Abort (Ctrl-C)

# The one exit-code table: the codes the CLI returns and what each means. Each AgentError
# class's exit_code is a row; the README's table is tested against this one.
EXIT_CODES: tuple[tuple[tuple[int, ...], str], ...] = (
    ((OK,), 'done, or nothing to do (including "not a target node" for `install`)'),
    ((BUG,), "unexpected internal error: a bug; the log has the traceback"),
    ((ConfigError.exit_code,),
     "usage or configuration error (the message names the flag and variable)"),
    ((NotATargetNode.exit_code,), "not a target node (`detect` only)"),
    ((PreflightError.exit_code,),
     "preflight failed (OS, Secure Boot, headers, `/run` propagation, disk, privileges)"),
    ((DownloadError.exit_code,), "download or verification of the installer failed"),
    ((InstallError.exit_code,), 'driver build or install failed (includes "reboot required")'),
    ((VerifyError.exit_code,), "driver installed but verification failed"),
    ((LockHeldError.exit_code,),
     "another instance holds the lock, or an NVIDIA installer is still running on the host"),
    ((UnhealthyError.exit_code,), "unhealthy (`check`, `probe`; `run` after a successful install)"),
    ((128 + 2, 128 + 15), "stopped by SIGINT / SIGTERM (128 + the signal); in a staged "
                          "upgrade's wait the message says `staged, waiting for reboot`"),
)


def exit_meaning(code: int) -> str:
    """What an exit code means, from the one table."""
    return next((meaning for codes, meaning in EXIT_CODES if code in codes), "undocumented")


def last_lines(text: str, count: int) -> str:
    """The last non-empty lines of a command's output, joined for one log line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])


class UnsafeHostPath(InstallError):
    """An agent-owned host path is a link, not root's, or writable by others (issue 12).

    Exit 6 by default; a step of another class (download, lock) re-raises it as its own.
    """
