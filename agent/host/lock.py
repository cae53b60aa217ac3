"""The host-wide lock: one grid-agent acts on a node at a time (flock, as the operator does)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

import structlog

from agent.errors import LockHeldError
from agent.host.paths import LOCK as LOCK_PATH
from agent.host.root import HostRoot

log = structlog.get_logger(__name__)

_POLL_SECONDS = 0.2


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return f"pid {text}" if text else "an unknown process"


def _acquire(fd: int, *, wait: bool, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    logged = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _holder(fd)
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                raise LockHeldError(f"another grid-agent ({holder}) holds {LOCK_PATH}") from None
            if not logged:
                log.info("lock_waiting", path=LOCK_PATH, holder=holder)
                logged = True
            time.sleep(_POLL_SECONDS)


@contextlib.contextmanager
def host_lock(root: HostRoot, *, wait: bool, timeout: float | None = None) -> Iterator[None]:
    """Hold flock on the host's lock file; raise LockHeldError (exit 8) unless `wait`.

    Opened through HostRoot: a lock that is a link (to a host file it would truncate), or
    is not root's, is refused (UnsafeHostPath), never followed.
    """
    fd = root.open_file(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, wait=wait, timeout=timeout)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        log.debug("lock_acquired", path=LOCK_PATH)
        yield
    finally:
        os.close(fd)  # closing drops the flock; a SIGKILLed holder drops it too
