"""Download progress: a log event every few seconds, and a bar when a person watches a TTY."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import structlog

log = structlog.get_logger(__name__)

Progress = Callable[[int, int | None], None]  # (bytes done, total or None)
_MIB = 1 << 20


def _rate(done: int, seconds: float) -> float:
    return round(done / seconds, 1) if seconds > 0 else 0.0


class Meter:
    """Counts bytes; logs `download_progress` every `every` seconds and feeds an optional bar."""

    def __init__(self, url: str, *, every: float = 5.0, progress: Progress | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.every = every
        self.progress = progress
        self.clock = clock
        self.started = clock()
        self.last = self.started
        self.received = 0  # every body byte off the wire, including restarted ones

    def update(self, done: int, total: int | None, got: int) -> None:
        self.received += got
        if self.progress is not None:
            self.progress(done, total)
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            # On a terminal the bar owns the line: end it so the log line starts clean.
            getattr(self.progress, "break_line", lambda: None)()
            log.info("download_progress", bytes=done, total=total,
                     rate_bytes_per_second=_rate(self.received, now - self.started))

    def seconds(self) -> float:
        return self.clock() - self.started


class TtyBar:
    """`[#####.....]  45%  180.0/400.0 MiB  85.2 MiB/s` redrawn in place on a terminal."""

    def __init__(self, stream: TextIO, *, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.width = width
        self.clock = clock
        self.started = clock()
        self.drawn = 0.0
        self.open = False  # a bar is drawn and its line not ended

    def __call__(self, done: int, total: int | None) -> None:
        now = self.clock()
        if now - self.drawn < 0.2 and done != total:
            return
        self.drawn = now
        rate = _rate(done, now - self.started) / _MIB
        if total:
            filled = self.width * done // total
            bar = "#" * filled + "." * (self.width - filled)
            text = f"[{bar}] {100 * done // total:3d}%  {done / _MIB:.1f}/{total / _MIB:.1f} MiB"
        else:
            text = f"{done / _MIB:.1f} MiB"
        self.stream.write(f"\r{text}  {rate:.1f} MiB/s")
        self.open = done != total
        if not self.open:
            self.stream.write("\n")
        self.stream.flush()

    def break_line(self) -> None:
        """End a half-drawn bar's line (before a log line is printed under it)."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def tty_progress(stream: TextIO | None = None) -> Progress | None:
    """A bar when the stream is a terminal (`grid-agent run`/`fetch` by hand), else None."""
    stream = stream or sys.stderr
    return TtyBar(stream) if stream.isatty() else None
