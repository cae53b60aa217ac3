"""`grid-agent run`: install with progress lines, then the health checks, for a person.

It composes install and health, so it lives above both (they never import each other).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import UnhealthyError
from agent.health.commands import build_health, format_table
from agent.install.commands import Echo, install_command
from agent.install.kit import Kit
from agent.install.pipeline import Outcome
from agent.settings import Settings


class _Progress:
    """One line per step for a person: `[ 3] packages ... done (changed)`."""

    def __init__(self, echo: Echo) -> None:
        self.echo, self.count, self.begun = echo, 0, 0.0

    def __call__(self, phase: str, name: str, changed: bool | None) -> None:
        if phase == "started":
            self.count += 1
            self.begun = time.monotonic()
            return
        took = time.monotonic() - self.begun
        word = "FAILED" if phase == "failed" else ("changed" if changed else "ok")
        self.echo(f"[{self.count:2d}] {name:<13} {word:<8} {took:6.1f}s")


@dataclass(frozen=True)
class HealthReport:
    lines: list[str]
    ready: bool
    reason: str


def health_report(settings: Settings) -> HealthReport:
    """The health sidecar's checks, once, as a table (agent/health)."""
    verdict = build_health(settings).check_once()
    return HealthReport(format_table(verdict).splitlines(), verdict.ready, verdict.reason())


def run_command(settings: Settings, *, wait_lock: bool | None, dry_run: bool, echo: Echo,
                kit: Kit | None = None,
                health: Callable[[Settings], HealthReport] = health_report) -> Outcome | None:
    """`run`: the install with progress lines, then the health checks for a person.

    Exit 9 (UnhealthyError) when the driver is in place but a check fails (licence...).
    """
    outcome = install_command(settings, wait_lock=wait_lock, dry_run=dry_run, echo=echo, kit=kit,
                              progress=_Progress(echo))
    if outcome is None:
        return None  # --dry-run printed the plan
    if outcome.outcome == "not_target":
        echo(f"nothing to do: {outcome.reason}")
        return outcome
    how = "already in place (fast path)" if outcome.outcome == "fast_path" else "installed"
    summary = outcome.verify.summary() if outcome.verify else "no report"
    echo(f"result: driver {how} and verified: {summary}")
    report = health(settings)
    for line in report.lines:
        echo(line)
    if not report.ready:
        raise UnhealthyError(f"driver installed and verified, but the node is not healthy: "
                             f"{report.reason}")
    return outcome
