"""SIGTERM/SIGINT become one `Terminated` error in the main thread, raised once.

The error unwinds like any failure: the runner stops the host command's process group
(agent/host/runner.py), the pipeline records the failure in state.json under the lock,
the CLI writes the termination message and exits 128 + the signal. A second signal while
that cleanup runs is logged and ignored, so the cleanup itself is never cut short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import structlog

from agent.errors import Terminated

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Within the block, the first SIGTERM/SIGINT raises Terminated; later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    seen: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if seen:
            log.warning("signal_ignored_during_cleanup", signal=name, first=seen[0])
            return
        seen.append(signum)
        log.warning("signal_received", signal=name, action="stopping")
        raise Terminated(signum, name)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
