"""What the `install` and `uninstall` commands do, behind the thin click layer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from agent.host import open_doors
from agent.install.kit import Kit, real_kit
from agent.install.pipeline import Outcome, Progress, Report, install
from agent.install.plan import format_plan, make_plan
from agent.settings import Settings

Echo = Callable[[str], None]


def _with_wait(settings: Settings, wait_lock: bool | None) -> Settings:
    return settings if wait_lock is None else dataclasses.replace(settings, wait_lock=wait_lock)


def install_command(settings: Settings, *, wait_lock: bool | None, dry_run: bool, echo: Echo,
                    kit: Kit | None = None, progress: Progress | None = None,
                    report: Report | None = None) -> Outcome | None:
    """`install`: converge (logs, plus progress lines if given), or print the plan (--dry-run)."""
    settings = _with_wait(settings, wait_lock)
    root, runner = open_doors(settings)
    kit = kit or real_kit()
    if dry_run:
        echo(format_plan(make_plan(settings, root, runner, kit)))
        return None
    return install(settings, root, runner, kit, progress=progress, report=report)


def uninstall_command(settings: Settings, *, wait_lock: bool | None, purge: bool, echo: Echo,
                      kit: Kit | None = None) -> None:
    from agent.install.uninstall import uninstall

    settings = _with_wait(settings, wait_lock)
    root, runner = open_doors(settings)
    report = uninstall(settings, root, runner, kit or real_kit(), purge=purge)
    for line in report.lines():
        echo(line)
