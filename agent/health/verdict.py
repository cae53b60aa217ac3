"""Check results and the verdict they add up to; the verdict file `probe` reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.driver.checks import FAIL, OK, SKIP, STATUSES, WARN, CheckResult
from agent.host.files import write_atomic

__all__ = ["FAIL", "OK", "SKIP", "STATUSES", "WARN", "CheckResult", "Verdict", "make_verdict",
           "probe_verdict_file", "summarize", "write_verdict_file"]

# Verdict states: ready unless unhealthy; a node without a target GPU must not stall rollouts.
HEALTHY, DEGRADED, UNHEALTHY, NOT_APPLICABLE = "healthy", "degraded", "unhealthy", "not_applicable"


@dataclass(frozen=True)
class Verdict:
    """One check cycle: every result, when it ran, how long it took, and facts for metrics."""

    state: str
    checks: tuple[CheckResult, ...]
    checked_at: float  # epoch seconds when the cycle started
    duration: float
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state != UNHEALTHY

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.status == FAIL)

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def reason(self) -> str:
        """One line: the failures, else the warnings, else the state."""
        bad = self.failures or tuple(c for c in self.checks if c.status == WARN)
        return "; ".join(f"{c.name}: {c.reason}" for c in bad) or self.state

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "ready": self.ready, "reason": self.reason(),
                "checked_at": self.checked_at, "duration_seconds": round(self.duration, 4),
                "checks": [asdict(c) for c in self.checks], "facts": self.facts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        checks = tuple(CheckResult(c["name"], c["status"], c["reason"], dict(c.get("details", {})))
                       for c in data["checks"])
        return cls(data["state"], checks, float(data["checked_at"]),
                   float(data["duration_seconds"]), dict(data.get("facts", {})))


def summarize(checks: tuple[CheckResult, ...], *, applicable: bool = True) -> str:
    """The verdict state the results add up to."""
    if not applicable:
        return NOT_APPLICABLE
    if any(c.status == FAIL for c in checks):
        return UNHEALTHY
    if any(c.status == WARN for c in checks):
        return DEGRADED
    return HEALTHY


def make_verdict(checks: tuple[CheckResult, ...], *, started: float, duration: float,
                 applicable: bool = True, facts: dict[str, Any] | None = None) -> Verdict:
    return Verdict(summarize(checks, applicable=applicable), checks, started, duration,
                   dict(facts or {}))


def write_verdict_file(path: Path, verdict: Verdict, *, stale_after: float, now: float) -> None:
    """Atomically, so `probe` never reads a torn file; `stale_after` says when to stop trusting."""
    payload = {**verdict.to_dict(), "written_at": now, "stale_after": stale_after}
    write_atomic(path, json.dumps(payload, sort_keys=True) + "\n")


@dataclass(frozen=True)
class ProbeAnswer:
    ok: bool
    reason: str


def probe_verdict_file(path: Path, kind: str, *, now: float) -> ProbeAnswer:
    """`live`: a fresh verdict file; `ready`: fresh and not unhealthy. Never raises."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        written, stale_after = float(data["written_at"]), float(data["stale_after"])
        verdict = Verdict.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return ProbeAnswer(False, f"no usable verdict at {path}: {exc}")
    age = now - written
    if age > stale_after:
        return ProbeAnswer(False, f"verdict is stale ({age:.0f}s old, limit {stale_after:.0f}s)")
    if kind == "ready" and not verdict.ready:
        return ProbeAnswer(False, verdict.reason())
    return ProbeAnswer(True, verdict.state)
