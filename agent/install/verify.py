"""Verify the driver the way the GPU Operator's validator will, before any hand-off.

"The driver works" has one definition, agent/driver/checks.py; verify is those checks on a
fresh snapshot, raising the first failure (exit 7). Watch judges the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from agent.driver.checks import Expect, driver_checks, first_failure
from agent.driver.nvsmi import NvsmiReport
from agent.driver.snapshot import Snapshot
from agent.errors import VerifyError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    module_version: str
    module_type: str
    report: NvsmiReport

    def summary(self) -> str:
        gpus = ", ".join(f"{g.pci_bus_id} {g.product_name}" for g in self.report.gpus)
        return (f"driver {self.report.driver_version} ({self.module_type} modules), "
                f"{len(self.report.gpus)} GPU(s): {gpus}")


def verify_snapshot(snap: Snapshot, want: Expect) -> VerifyResult:
    """The driver checks on this snapshot; VerifyError (exit 7) with the first failure."""
    failed = first_failure(driver_checks(snap, want))
    if failed is not None:
        raise VerifyError(failed.reason)
    if snap.smi is None or snap.smi.report is None:  # the checks fail first; a bug otherwise
        raise VerifyError("nvidia-smi was not run")
    report = snap.smi.report
    module_type = want.module_type or snap.modules.module_type or "unknown"
    log.info("driver_verified", driver=report.driver_version, module_type=module_type,
             gpus=len(report.gpus))
    return VerifyResult(want.module_version, module_type, report)
