"""The vGPU licence status nvidia-smi reports, classified (formats.md: nvidia-smi -q -x)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

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
        return datetime(*(int(part) for part in found.groups()), tzinfo=UTC)
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
