"""The host's running kernel, asked of the host (the container's own view may differ)."""

from __future__ import annotations

from agent.errors import HostCommandError, PreflightError
from agent.host.runner import HostRunner

__all__ = ["host_kernel_release"]


def host_kernel_release(runner: HostRunner) -> str:
    """`uname -r` asked of the host (the container's own kernel view may differ)."""
    try:
        release = runner.run(["uname", "-r"], timeout=30).stdout.strip()
    except HostCommandError as exc:
        raise PreflightError(f"cannot ask the host for its kernel release: {exc.message}",
                             remedy="check that nsenter works (privileged, hostPID)") from exc
    if not release or "/" in release or release.startswith("."):
        raise PreflightError(f"the host reported an unusable kernel release {release!r}")
    return release
