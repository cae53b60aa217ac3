"""The two doors to the host: HostRoot for files, HostRunner for processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.host.root import HostRoot
from agent.host.runner import HostRunner

if TYPE_CHECKING:
    from agent.settings import Settings


def open_doors(settings: Settings) -> tuple[HostRoot, HostRunner]:
    """The HostRoot and HostRunner that settings describe."""
    runner = HostRunner(
        pid=settings.host_pid if settings.nsenter else None,
        timeout=settings.command_timeout,
    )
    return HostRoot(settings.host_root), runner
