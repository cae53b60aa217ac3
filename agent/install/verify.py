"""Verify the installed driver the way the GPU Operator's validator will, before any hand-off."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import structlog

from agent.driver.nvsmi import NvsmiReport, run_smi
from agent.driver.state import read_module_state
from agent.errors import VerifyError, last_lines
from agent.host.paths import SMI as SMI_PATH
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

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


def check_smi_binary(root: HostRoot) -> None:
    """A non-empty regular executable at /usr/bin/nvidia-smi, as the validator demands."""
    try:
        path = root.resolve(SMI_PATH)
        info = path.stat()
    except OSError:
        raise VerifyError(f"{SMI_PATH} is missing on the host") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        raise VerifyError(f"{SMI_PATH} on the host is not a non-empty regular file")
    if not os.access(path, os.X_OK):
        raise VerifyError(f"{SMI_PATH} on the host is not executable")


def _check_smi(runner: HostRunner, module_version: str) -> NvsmiReport:
    outcome = run_smi(runner)
    if outcome.exit_code != 0:
        tail = last_lines(outcome.output, 2)
        raise VerifyError(f"nvidia-smi exited {outcome.exit_code} (the GPU Operator's validator "
                          f"requires 0): {tail or outcome.reason or 'no output'}")
    if outcome.report is None:
        raise VerifyError(f"nvidia-smi -q -x gave no usable report: {outcome.reason}")
    report = outcome.report
    if not report.gpus:
        raise VerifyError("nvidia-smi reports no GPUs")
    if report.driver_version != module_version:
        raise VerifyError(f"nvidia-smi reports driver {report.driver_version}, "
                          f"expected {module_version}")
    return report


def _check_module(root: HostRoot, module_version: str, module_type: str) -> None:
    state = read_module_state(root)
    if not state.loaded:
        raise VerifyError("the nvidia kernel module is not loaded")
    if state.version != module_version:
        raise VerifyError(f"loaded nvidia module is {state.version}, expected {module_version}")
    if state.module_type is not None and state.module_type != module_type:
        raise VerifyError(f"loaded nvidia module is the {state.module_type} flavour, "
                          f"but {module_type} was installed")


def verify_driver(root: HostRoot, runner: HostRunner, *, module_version: str,
                  module_type: str) -> VerifyResult:
    """File checks first (free), then nvidia-smi; raise VerifyError (exit 7) with the reason."""
    _check_module(root, module_version, module_type)
    check_smi_binary(root)
    report = _check_smi(runner, module_version)
    result = VerifyResult(module_version, module_type, report)
    log.info("driver_verified", driver=report.driver_version, module_type=module_type,
             gpus=len(report.gpus))
    return result
