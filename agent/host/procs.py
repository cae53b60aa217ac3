"""The host's processes as its /proc shows them (file reads only, no process started)."""

from __future__ import annotations

import contextlib
from pathlib import Path, PurePosixPath

from agent.errors import InstallerRunning
from agent.host.root import HostRoot

# Where the agent keeps installers (cache, private copies): any `.run` under these is ours.
AGENT_DIRS = ("/var/cache/grid-agent/", "/var/lib/grid-agent/", "/run/grid-agent/")


def _cmdline(path: Path) -> list[str]:
    with path.open("rb") as handle:
        raw = handle.read(8192)
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_installer(argv: list[str]) -> bool:
    """nvidia-installer itself, a makeself `.run` of NVIDIA's, or any `.run` of the agent's."""
    if not argv:
        return False
    if PurePosixPath(argv[0]).name == "nvidia-installer":
        return True
    for arg in argv[:3]:
        name = PurePosixPath(arg).name
        if not name.endswith(".run"):
            continue
        if "nvidia" in name.lower() or any(d in arg for d in AGENT_DIRS):
            return True
    return False


def running_installers(root: HostRoot) -> list[tuple[int, str]]:
    """(pid, command line) of each installer process alive on the host, oldest pid first."""
    proc = root.path("/proc")
    found = []
    try:
        entries = [e for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        with contextlib.suppress(OSError):
            argv = _cmdline(entry / "cmdline")
            if is_installer(argv) and _alive(entry / "stat"):
                found.append((int(entry.name), " ".join(argv)))
    return sorted(found)


def _alive(stat_path: Path) -> bool:
    """Not a zombie (state Z) or dead (X): those are gone, only not reaped yet."""
    with stat_path.open("rb") as handle:
        state = handle.read(4096).rsplit(b")", 1)[-1].split()[:1]
    return state not in ([b"Z"], [b"X"])


def refuse_running_installer(root: HostRoot) -> None:
    """An installer still running (an earlier agent's, a person's) must finish first."""
    found = running_installers(root)
    if found:
        pid, cmdline = found[0]
        raise InstallerRunning(f"an NVIDIA installer is still running on the host (pid {pid}: "
                               f"{cmdline[:120]}); not starting another")
