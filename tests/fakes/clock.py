"""A clock that moves only when a test says so, far from any real clock's reading."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# Far from the real monotonic clock (machine uptime) and from today's date, so a stray
# read of a real clock shows up as a wrong number instead of passing by luck.
MONOTONIC_START = 1_000_000.0
WALL_START = datetime(2026, 6, 1, tzinfo=UTC)  # the smi fixtures' licence expires 2026-07-07


@dataclass
class FakeClock:
    mono: float = MONOTONIC_START
    wall: float = WALL_START.timestamp()

    @classmethod
    def at(cls, when: datetime) -> FakeClock:
        return cls(wall=when.timestamp())

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall, UTC)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds
