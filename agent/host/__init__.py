"""The two doors to the host: HostRoot for files, HostRunner for processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.errors import ConfigError
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

if TYPE_CHECKING:
    from agent.settings import Settings


def host_root(settings: Settings) -> HostRoot:
    """The configured host root; it must exist and be a directory (never created here)."""
    path = settings.host_root
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(f"host root {path} {what} (--host-root / GRID_AGENT_HOST_ROOT)",
                          remedy="mount the host's / there (hostPath /) or fix the setting")
    return HostRoot(path)


def host_runner(settings: Settings) -> HostRunner:
    """The HostRunner that settings describe (nsenter into host_pid, or direct)."""
    return HostRunner(pid=settings.host_pid if settings.nsenter else None,
                      timeout=settings.command_timeout)


def open_doors(settings: Settings) -> tuple[HostRoot, HostRunner]:
    """The HostRoot and HostRunner that settings describe."""
    return host_root(settings), host_runner(settings)
