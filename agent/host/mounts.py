"""The host's mount table (`/proc/1/mountinfo`), parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.host.paths import MOUNTINFO
from agent.host.root import HostRoot

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040 and friends.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    dev: str  # major:minor of the filesystem
    fs_root: str  # the path inside the filesystem that is mounted here
    mount_point: str
    optional: tuple[str, ...]  # shared:N, master:N, propagate_from:N, unbindable
    fstype: str

    @property
    def shared(self) -> bool:
        return any(tag.startswith("shared:") for tag in self.optional)


def parse_mountinfo(text: str) -> list[Mount]:
    """Each well-formed line, in mount order; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        parts = left.split()
        if not sep or len(parts) < 6 or not right.split():
            continue
        try:
            mount_id, parent_id = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        mounts.append(Mount(mount_id, parent_id, parts[2], _unescape(parts[3]),
                            _unescape(parts[4]), tuple(parts[6:]), right.split()[0]))
    return mounts


def read_mountinfo(root: HostRoot) -> str:
    """The host's mount table as seen by its PID 1 (empty when unreadable)."""
    return root.read_text(MOUNTINFO, "") or ""


def top_mount_at(mounts: list[Mount], mount_point: str) -> Mount | None:
    """The visible (last mounted) mount exactly at `mount_point`."""
    found = [m for m in mounts if m.mount_point == mount_point]
    return found[-1] if found else None


def covering_mount(mounts: list[Mount], path: str) -> Mount | None:
    """The mount whose mount point is the longest prefix of `path`."""
    best: Mount | None = None
    for mount in mounts:
        mp = mount.mount_point
        inside = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = mount
    return best
