"""The vGPU licence status nvidia-smi reports, classified (docs/design/formats.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Non-padded: "Licensed (Expiry: 2026-7-7 16:1:44 GMT)".
_EXPIRY = re.compile(
    r"Expiry:\s*(\d{4})-(\d{1,2})-(\d{1,2})\s+(\d{1,2}):(\d{1,2}):(\d{1,2})\s*(?:GMT|UTC)?\s*\)?"
)


@dataclass(frozen=True)
class License:
    state: str  # licensed | unlicensed | unknown
    expiry: datetime | None  # UTC; None when permanent, N/A or not given
    permanent: bool
    raw: str | None

    @property
    def licensed(self) -> bool:
        return self.state == "licensed"


def _expiry(text: str) -> datetime | None:
    found = _EXPIRY.search(text)
    if not found:
        return None
    try:
        year, month, day, hour, minute, second = (int(part) for part in found.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:  # 2026-13-40: not a date, so no expiry we can trust
        return None


def classify_license(status: str | None) -> License:
    """Case-sensitive prefix `Licensed`: a case-insensitive "licensed" also matches Unlicensed."""
    text = (status or "").strip()
    if text.startswith("Licensed"):
        permanent = "Permanent" in text
        return License("licensed", None if permanent else _expiry(text), permanent, text)
    if text.startswith("Unlicensed"):
        return License("unlicensed", None, False, text)
    return License("unknown", None, False, text or None)


# A lease is at risk when its expiry stood still for this fraction of the time it had left
# when first seen: a client renews well before half of its lease has run out (the renewal
# interval is a licence-server setting; the exact value is not assumed here).
STALL_FRACTION = 0.5
LAPSED, AT_RISK, LEASE_OK = "lapsed", "at_risk", "ok"


@dataclass(frozen=True)
class LeaseSeen:
    """What the watch loop remembers of one GPU's lease: its expiry and when it was first seen."""

    expiry: datetime
    since: datetime


def remember(previous: LeaseSeen | None, lic: License, now: datetime) -> LeaseSeen | None:
    """The lease memory after this observation: kept while the expiry stands, reset on a move."""
    if lic.expiry is None:
        return None
    if previous is not None and previous.expiry == lic.expiry:
        return previous
    return LeaseSeen(lic.expiry, now)


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


def judge_lease(lic: License, now: datetime, *, min_remaining: timedelta,
                seen: LeaseSeen | None = None) -> tuple[str, str]:
    """(lapsed | at_risk | ok, reason): lapsed when not Licensed or expired; at risk when the
    lease will run out before a renewal can plausibly land (less than `min_remaining` left),
    or when its expiry has not moved although a renewal was due (see STALL_FRACTION)."""
    if not lic.licensed:
        return LAPSED, f"not licensed ({lic.raw or 'no licence status'})"
    if lic.expiry is None:
        return LEASE_OK, lic.raw or "Licensed"
    left = lic.expiry - now
    if left <= timedelta(0):
        return LAPSED, f"licence lease expired at {lic.expiry.isoformat()} ({_hours(-left)} ago)"
    if left < min_remaining:
        return AT_RISK, (f"licence lease ends in {_hours(left)}, under the "
                         f"{_hours(min_remaining)} minimum: renewals are not landing")
    if seen is not None and seen.expiry == lic.expiry:
        stood = now - seen.since
        if stood > (seen.expiry - seen.since) * STALL_FRACTION:
            return AT_RISK, (f"licence lease not renewed: expiry {lic.expiry.isoformat()} "
                             f"unchanged for {_hours(stood)}, {_hours(left)} left")
    return LEASE_OK, f"licensed, lease ends in {_hours(left)}"


class LeaseBook:
    """The watch loop's memory of each GPU's lease across cycles (one writer: the cycle)."""

    def __init__(self) -> None:
        self._seen: dict[str, LeaseSeen] = {}

    def update(self, statuses: Mapping[str, str | None], now: datetime) -> dict[str, LeaseSeen]:
        """Fold in this cycle's licence statuses (bus id -> status); the memory after it."""
        seen = {}
        for bus, status in statuses.items():
            kept = remember(self._seen.get(bus), classify_license(status), now)
            if kept is not None:
                seen[bus] = kept
        self._seen = seen
        return dict(seen)
