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

__all__ = ["Flow", "Outcome", "Progress", "gate", "install", "step_file_error", "walk"]


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
            progress: Progress | None = None,
            on_failure: Callable[[AgentError], None] | None = None) -> Outcome:
    """Converge the node; raise the step's AgentError (recorded in state.json) on failure.

    `on_failure` (the CLI's termination message) runs after the record, before the lock
    is let go: whoever takes the lock next finds both written.
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
        except upgrade.Staged:
            pass  # the record still describes the driver in place; wait outside the lock
        except AgentError as exc:
            _record_failure(flow, exc)
            if on_failure is not None:
                on_failure(exc)
            raise
    info = upgrade.staged_info(root) or {}
    upgrade.Waiter(root, interval=settings.watch_interval).wait(info)
    return install(settings, root, runner, kit, progress=progress,
                   on_failure=on_failure)  # drained: go on now


def _record_failure(flow: Flow, exc: AgentError) -> None:
    # The marker must not outlive a failed verification; the record must not claim success.
    if isinstance(exc, VerifyError):
        flow.kit.remove_marker(flow.root)
    try:
        flow.record("failed", exc.exit_code)
    except OSError as err:
        log.warning("install_record_unwritable", error=str(err))
