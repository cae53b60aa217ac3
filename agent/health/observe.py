"""Gather what one check cycle looks at: files first (free), then a few host commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from agent.driver.foreign import ForeignDriver, find_foreign, ours_of
from agent.driver.license import LeaseSeen, classify_license
from agent.driver.nvsmi import GpuReport, SmiOutcome
from agent.driver.profile import parse_vgpu_type
from agent.driver.record import InstallRecord
from agent.driver.snapshot import Snapshot, take_snapshot
from agent.driver.state import ModuleState
from agent.handoff import Handoff
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.host.systemd import unit_exists, unit_state
from agent.pci import PciDevice, TargetSpec, detect
from agent.vgpu import HostVgpu, read_host_vgpu

log = structlog.get_logger(__name__)

KERNEL_RELEASE = "/proc/sys/kernel/osrelease"
VULKAN_ICDS = ("/usr/share/vulkan/icd.d/nvidia_icd.json", "/etc/vulkan/icd.d/nvidia_icd.json")
GLX_LIBS = ("/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0", "/usr/lib64/libGLX_nvidia.so.0",
            "/usr/lib/libGLX_nvidia.so.0", "/lib/x86_64-linux-gnu/libGLX_nvidia.so.0")


@dataclass(frozen=True)
class Observation:
    """The node as seen in one cycle: the driver Snapshot plus what only watch looks at."""

    targets: tuple[str, ...]  # target PCI slots, e.g. ("0000:00:02.0",)
    snapshot: Snapshot  # smi and handoff are None on a node without a target
    gridd: str  # `systemctl is-active nvidia-gridd`: active | inactive | failed | ...
    gridd_unit: bool  # nvidia-gridd.service exists on the host
    persistenced: str  # `systemctl is-active nvidia-persistenced`
    vulkan_icd: str | None  # the host path found, or None
    glx_lib: str | None
    at: datetime  # when it was observed, on the app's clock (licence expiry is judged at it)
    kernel_release: str | None = None  # the host's /proc/sys/kernel/osrelease
    leases: Mapping[str, LeaseSeen] = field(default_factory=dict)  # the watch loop's memory
    host_vgpu: HostVgpu | None = None  # the hypervisor's vGPU manager (PCI config space)
    host_vgpu_unknown: str = ""  # why it is unknown (no capability, unreadable): a fact
    prebuilds: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # state.json prebuilds
    foreign: ForeignDriver | None = None  # another NVIDIA driver installation; None: not looked

    @property
    def module(self) -> ModuleState:
        return self.snapshot.modules

    @property
    def smi(self) -> SmiOutcome | None:
        return self.snapshot.smi

    @property
    def handoff(self) -> Handoff | None:
        return self.snapshot.handoff

    @property
    def record(self) -> InstallRecord | None:
        return self.snapshot.record


def first_present(root: HostRoot, paths: Sequence[str]) -> str | None:
    return next((p for p in paths if root.exists(p)), None)


def target_slots(scan_pci: Callable[[], Sequence[PciDevice]], spec: TargetSpec) -> tuple[str, ...]:
    return tuple(d.slot for d in detect(list(scan_pci()), spec).targets)


def observe(root: HostRoot, runner: HostRunner, *, targets: tuple[str, ...],
            command_timeout: float, at: datetime, pin_version: str) -> Observation:
    """Read the node; on a non-target node nothing is run (targets empty)."""
    applicable = bool(targets)
    host_vgpu, host_why = read_host_vgpu(root) if applicable else (None, "")
    snapshot = take_snapshot(root, runner, smi=applicable, handoff=applicable,
                             timeout=command_timeout)
    gridd = unit_state(runner, "nvidia-gridd", timeout=command_timeout) if applicable else ""
    persist = (unit_state(runner, "nvidia-persistenced", timeout=command_timeout)
               if applicable else "")
    return Observation(
        targets=targets,
        snapshot=snapshot,
        gridd=gridd,
        gridd_unit=unit_exists(root, "nvidia-gridd.service"),
        persistenced=persist,
        vulkan_icd=first_present(root, VULKAN_ICDS),
        glx_lib=first_present(root, GLX_LIBS),
        at=at,
        kernel_release=(root.read_text(KERNEL_RELEASE) or "").strip() or None,
        host_vgpu=host_vgpu,
        host_vgpu_unknown=host_why,
        prebuilds=snapshot.prebuilds,
        # Files only: the fast path never removes another driver, so watch names it.
        foreign=find_foreign(root, pin_version, ours_of(snapshot.record)) if applicable else None,
    )


def _gpu_facts(gpu: GpuReport) -> dict[str, Any]:
    lic = classify_license(gpu.license_status)
    vgpu = parse_vgpu_type(gpu.product_name)
    return {"pci_bus_id": gpu.pci_bus_id, "product_name": gpu.product_name,
            "profile": vgpu.profile if vgpu else None,
            "vgpu_series": vgpu.series if vgpu else None,
            "virtualization_mode": gpu.virtualization_mode,
            "mig": gpu.mig_current, "license_state": lic.state, "license_permanent": lic.permanent,
            "license_expiry": lic.expiry.timestamp() if lic.expiry else None}


def describe(obs: Observation) -> dict[str, Any]:
    """A few facts for metrics and /status, beyond the check results."""
    report = obs.smi.report if obs.smi else None
    rec = obs.record
    return {
        "targets": list(obs.targets),
        "module_version": obs.module.version,
        "kernel_release": obs.kernel_release,
        "host_vgpu": obs.host_vgpu.as_dict() if obs.host_vgpu else None,
        "host_vgpu_unknown": obs.host_vgpu_unknown or None,
        "module_type": obs.module.module_type,
        "driver_version": report.driver_version if report else None,
        "cuda_version": report.cuda_version if report else None,
        "gpus": [_gpu_facts(g) for g in report.gpus] if report else [],
        "install": None if rec is None else {
            "version": rec.version, "outcome": rec.outcome, "exit_code": rec.exit_code,
            "duration_seconds": rec.duration_seconds, "finished_at": rec.finished_at,
            "module_type": rec.module_type},
        "foreign_driver": obs.foreign.describe() if obs.foreign else None,
        "prebuilds": {release: {"outcome": entry["outcome"],
                                "finished_at": entry.get("finished_at"),
                                "error": entry.get("error")}
                      for release, entry in sorted(obs.prebuilds.items())},
    }
