"""Whether the driver works: pure checks of a Snapshot, the one definition install's verify,
the fast path, the dry-run plan and watch's self-heal all use (issue 11)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.driver.snapshot import Snapshot
from agent.errors import last_lines

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # ok | warn | fail | skip
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Expect:
    """What the driver must be: the pin's module version, and the module type installed."""

    module_version: str  # e.g. 580.105.08
    module_type: str | None = None  # None: what the install record says
    targets: tuple[str, ...] = ()  # PCI slots nvidia-smi must list, e.g. ("0000:00:02.0",)


def _r(name: str, status: str, reason: str, **details: object) -> CheckResult:
    return CheckResult(name, status, reason, dict(details))


def check_driver_loaded(snap: Snapshot, want: Expect) -> CheckResult:
    mod = snap.modules
    if not mod.loaded:
        return _r("driver_loaded", FAIL, "the nvidia kernel module is not loaded",
                  nouveau_loaded=mod.nouveau_loaded)
    if mod.version != want.module_version:
        return _r("driver_loaded", FAIL,
                  f"loaded nvidia module is {mod.version}, expected {want.module_version}",
                  version=mod.version, expected=want.module_version)
    return _r("driver_loaded", OK, f"nvidia {mod.version} loaded", version=mod.version,
              refcnt=mod.refcnt)


def check_module_type(snap: Snapshot, want: Expect) -> CheckResult:
    installed = want.module_type or (snap.record.module_type if snap.record else None)
    loaded = snap.modules.module_type
    if not installed:
        return _r("module_type", SKIP, "no install record to compare with", loaded=loaded)
    if loaded is None:
        return _r("module_type", SKIP, "loaded module type unknown", installed=installed)
    if loaded != installed:
        return _r("module_type", FAIL,
                  f"the {loaded} module is loaded but {installed} was installed",
                  loaded=loaded, installed=installed)
    return _r("module_type", OK, f"{loaded} kernel modules, as installed", loaded=loaded)


def check_nvidia_smi(snap: Snapshot, want: Expect) -> CheckResult:
    smi = snap.smi
    if smi is None:
        return _r("nvidia_smi", SKIP, "not run")
    if snap.smi_binary:
        return _r("nvidia_smi", FAIL, snap.smi_binary, exit_code=smi.exit_code)
    if smi.exit_code == 127:
        return _r("nvidia_smi", FAIL, "nvidia-smi is not installed on the host (exit 127)",
                  exit_code=127)
    if smi.exit_code != 0:
        tail = last_lines(smi.output, 2)
        return _r("nvidia_smi", FAIL, f"nvidia-smi exited {smi.exit_code}"
                  + (f": {tail}" if tail else ""), exit_code=smi.exit_code)
    return _r("nvidia_smi", OK, "nvidia-smi exits 0", exit_code=0)


def check_gpus(snap: Snapshot, want: Expect) -> CheckResult:
    report = snap.smi.report if snap.smi else None
    if report is None:
        why = (snap.smi.xml_reason or snap.smi.reason) if snap.smi else "nvidia-smi not run"
        if snap.smi is not None and snap.smi.exit_code == 127:
            why = "nvidia-smi is not installed"
        return _r("gpus", FAIL, f"no nvidia-smi -q -x report: {why}")
    if not report.gpus:
        return _r("gpus", FAIL, "nvidia-smi reports no GPUs")
    listed = {g.slot for g in report.gpus}
    missing = [slot for slot in want.targets if slot not in listed]
    if missing:
        return _r("gpus", FAIL, f"target GPU(s) {', '.join(missing)} not listed by nvidia-smi",
                  missing=missing, listed=sorted(listed))
    if report.driver_version != want.module_version:
        return _r("gpus", FAIL, f"nvidia-smi reports driver {report.driver_version}, "
                  f"expected {want.module_version}", driver_version=report.driver_version)
    count = len(want.targets) or len(report.gpus)
    what = "target GPU(s)" if want.targets else "GPU(s)"
    return _r("gpus", OK, f"{count} {what} listed, driver {report.driver_version}",
              listed=sorted(listed))


DRIVER_CHECKS: tuple[Callable[[Snapshot, Expect], CheckResult], ...] = (
    check_driver_loaded, check_module_type, check_nvidia_smi, check_gpus)
DRIVER_CHECK_NAMES = ("driver_loaded", "module_type", "nvidia_smi", "gpus")


def driver_checks(snap: Snapshot, want: Expect) -> tuple[CheckResult, ...]:
    """The checks that decide "the driver works", in a fixed order."""
    return tuple(check(snap, want) for check in DRIVER_CHECKS)


def first_failure(checks: tuple[CheckResult, ...]) -> CheckResult | None:
    """The first failed driver check, or None when the driver works."""
    return next((c for c in checks if c.name in DRIVER_CHECK_NAMES and c.status == FAIL), None)


def driver_works(checks: tuple[CheckResult, ...]) -> bool:
    """Every driver check ran and none failed (a skipped module type comparison is fine)."""
    by_name = {c.name: c.status for c in checks}
    return (all(name in by_name for name in DRIVER_CHECK_NAMES)
            and by_name["nvidia_smi"] == OK and first_failure(checks) is None)
