"""What the `install`, `run` and `uninstall` commands do, behind the thin click layer."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import UnhealthyError
from agent.host import open_doors
from agent.install.kit import Kit, real_kit
from agent.install.pipeline import Outcome, Progress, install
from agent.install.plan import format_plan, make_plan
from agent.settings import Settings

Echo = Callable[[str], None]


def _with_wait(settings: Settings, wait_lock: bool | None) -> Settings:
    return settings if wait_lock is None else dataclasses.replace(settings, wait_lock=wait_lock)


def install_command(settings: Settings, *, wait_lock: bool | None, dry_run: bool, echo: Echo,
                    kit: Kit | None = None) -> Outcome | None:
    """`install`: converge quietly (logs only), or print the plan with --dry-run."""
    return _converge(settings, wait_lock, dry_run, echo, kit, progress=None)


def _converge(settings: Settings, wait_lock: bool | None, dry_run: bool, echo: Echo,
              kit: Kit | None, progress: Progress | None) -> Outcome | None:
    settings = _with_wait(settings, wait_lock)
    root, runner = open_doors(settings)
    kit = kit or real_kit()
    if dry_run:
        echo(format_plan(make_plan(settings, root, runner, kit)))
        return None
    return install(settings, root, runner, kit, progress=progress)


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
    from agent.health.commands import build_health, format_table

    verdict = build_health(settings).check_once()
    return HealthReport(format_table(verdict).splitlines(), verdict.ready, verdict.reason())


def run_command(settings: Settings, *, wait_lock: bool | None, dry_run: bool, echo: Echo,
                kit: Kit | None = None,
                health: Callable[[Settings], HealthReport] = health_report) -> Outcome | None:
    """`run`: the install with progress lines, then the health checks for a person.

    Exit 9 (UnhealthyError) when the driver is in place but a check fails (licence...).
    """
    outcome = _converge(settings, wait_lock, dry_run, echo, kit, progress=_Progress(echo))
    if outcome is None:
        return None  # --dry-run printed the plan
    if outcome.outcome == "not_target":
        echo(f"nothing to do: {outcome.reason}")
        return outcome
    how = "already in place (fast path)" if outcome.outcome == "fast_path" else "installed"
    echo(f"result: driver {how} and verified: {outcome.verify.summary()}")
    report = health(settings)
    for line in report.lines:
        echo(line)
    if not report.ready:
        raise UnhealthyError(f"driver installed and verified, but the node is not healthy: "
                             f"{report.reason}")
    return outcome


def uninstall_command(settings: Settings, *, wait_lock: bool | None, purge: bool, echo: Echo,
                      kit: Kit | None = None) -> None:
    from agent.install.uninstall import uninstall

    settings = _with_wait(settings, wait_lock)
    root, runner = open_doors(settings)
    report = uninstall(settings, root, runner, kit or real_kit(), purge=purge)
    for line in report.lines():
        echo(line)
