"""The install: gate, lock, then walk the declared steps (steps.py) up to the hand-off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import structlog

from agent.errors import AgentError, VerifyError
from agent.host.procs import refuse_running_installer
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install import upgrade
from agent.install.flow import Flow, Progress, step_file_error
from agent.install.kit import Kit
from agent.install.pin import resolve_pin
from agent.install.steps import STEPS, Step, applies
from agent.install.verify import VerifyResult
from agent.pci import detect
from agent.settings import Settings

log = structlog.get_logger(__name__)

__all__ = ["Flow", "Outcome", "Progress", "Report", "gate", "install", "step_file_error", "walk"]

Report = Callable[[str], None]  # the CLI's termination message writer


@dataclass(frozen=True)
class Outcome:
    """What `install` did: not_target, fast_path or installed (failures raise)."""

    outcome: str
    verify: VerifyResult | None = None  # when the driver was verified
    reason: str = ""


def walk(flow: Flow, steps: tuple[Step, ...] = STEPS) -> None:
    """Each step's act in the declared order; a step's rescue may finish it another way."""
    for step in steps:
        if not applies(step, flow.fast):
            continue
        try:
            flow.step(step.name, partial(step.act, flow))
        except AgentError as exc:
            if step.rescue is None:
                raise
            step.rescue(flow, exc)


def gate(settings: Settings, kit: Kit) -> tuple[str | None, tuple[str, ...]]:
    """(None, target slots) on a target node, else (why this node is left alone, ())."""
    found = detect(list(kit.scan_pci()), settings.target_spec)
    if found.is_target_node:
        slots = tuple(d.slot for d in found.targets)
        log.info("target_found", targets=list(slots))
        return None, slots
    wanted = ",".join(str(i) for i in settings.target_ids)
    return (f"no target PCI function ({wanted}); {len(found.nvidia)} other NVIDIA function(s)",
            ())


def install(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit, *,
            progress: Progress | None = None, report: Report | None = None) -> Outcome:
    """Converge the node; raise the step's AgentError (recorded in state.json) on failure.

    `report` (the CLI's termination message) gets a failure's line after the record, before
    the lock is let go: whoever takes the lock next finds both written. It also gets a
    staged upgrade's line before the wait, as the kubelet shows it if the wait is killed.
    """
    why, targets = gate(settings, kit)
    if why is not None:
        log.info("not_a_target_node", reason=why, changed=False)
        return Outcome("not_target", reason=why)
    pin = resolve_pin(settings, kit)
    wait = settings.wait_lock
    with kit.lock(root, wait=wait, timeout=settings.install_timeout if wait else None):
        refuse_running_installer(root)
        flow = Flow(settings, root, runner, kit, pin, targets, progress)
        try:
            walk(flow)
            return Outcome("fast_path" if flow.fast else "installed", flow.verified)
        except upgrade.Staged as exc:
            _report(report, exc.line())  # the record still describes the driver in place
        except AgentError as exc:
            _record_failure(flow, exc)
            _report(report, exc.line())
            raise
    return _wait_staged(settings, root, runner, kit, progress=progress, report=report)


def _wait_staged(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit, *,
                 progress: Progress | None, report: Report | None) -> Outcome:
    """Outside the lock, until the GPU is free (upgrade.Waiter); then install at once."""
    info = upgrade.staged_info(root) or {}
    upgrade.Waiter(root, interval=settings.watch_interval).wait(info)
    done = install(settings, root, runner, kit, progress=progress, report=report)
    # The staged line must not stay as the message of a container that completed.
    _report(report, f"upgrade to {info.get('version')} installed without a reboot: it was "
                    f"staged until its GPU users went away")
    return done


def _report(report: Report | None, line: str) -> None:
    if report is not None:
        report(line)


def _record_failure(flow: Flow, exc: AgentError) -> None:
    # The marker must not outlive a failed verification; the record must not claim success.
    if isinstance(exc, VerifyError):
        flow.kit.remove_marker(flow.root)
    try:
        flow.record("failed", exc.exit_code)
    except OSError as err:
        log.warning("install_record_unwritable", error=str(err))
