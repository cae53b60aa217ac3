"""Atomic file writes on the host: temp file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.host.root import HostRoot


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o644) -> None:
    """Readers see the old content or the new, never a torn file."""
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    fsync_dir(path.parent)


def write_if_changed(root: HostRoot, host_path: str, text: str, *, mode: int = 0o644) -> bool:
    """Write atomically through HostRoot only when the content differs; True when it wrote.

    A link there is never read through: it counts as different and is replaced.
    """
    if root.read_nofollow(host_path) == text.encode():
        return False
    root.write_file(host_path, text, mode=mode)
    return True


def fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
