"""The clock an app reads, passed in: one per app, so the cache, /status and /metrics agree."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds for ages and durations (never jumps)."""

    def time(self) -> float:
        """Epoch seconds, for stamps a person or Prometheus reads."""

    def now(self) -> datetime:
        """The same instant as an aware UTC datetime (licence expiry)."""


class SystemClock:
    """The real clocks; the only place the health side reads them."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(UTC)
