"""The health checks: pure functions from one Observation to named results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from agent.catalog import known_bad_kernel
from agent.driver import checks as driver
from agent.driver.checks import Expect, driver_works
from agent.driver.license import AT_RISK, LAPSED, LEASE_OK, classify_license, judge_lease
from agent.driver.nvsmi import GpuReport, NvsmiReport
from agent.driver.profile import parse_vgpu_type, profile_matches
from agent.driver.snapshot import Snapshot
from agent.health.observe import Observation
from agent.health.verdict import FAIL, OK, SKIP, WARN, CheckResult
from agent.vgpu import BEHIND, REFUSE, UNKNOWN, judge_guest
from agent.vgpu import OK as VGPU_OK


@dataclass(frozen=True)
class HealthConfig:
    module_version: str  # e.g. 580.105.08 (catalog.module_version of the pinned release)
    expected_profile: str = ""  # "" accepts any RTX Pro 6000 vGPU type; else the profile part
    mig_policy: str = "warn"  # warn | fail when MIG is not Enabled
    license_min_remaining: float = 4 * 3600.0  # seconds of lease left below which it is at risk


def _r(name: str, status: str, reason: str, **details: object) -> CheckResult:
    return CheckResult(name, status, reason, dict(details))


def _report(obs: Observation) -> NvsmiReport | None:
    return obs.smi.report if obs.smi else None


def _target_gpus(obs: Observation) -> list[GpuReport]:
    report = _report(obs)
    if report is None:
        return []
    return [g for g in report.gpus if g.slot in obs.targets] or list(report.gpus)


def _driver(check: Callable[[Snapshot, Expect], CheckResult]
            ) -> Callable[[Observation, HealthConfig], CheckResult]:
    """A driver check (agent/driver/checks.py) judged on this cycle's snapshot."""
    def judged(obs: Observation, cfg: HealthConfig) -> CheckResult:
        return check(obs.snapshot, expect(obs, cfg))
    judged.__name__ = check.__name__
    return judged


def expect(obs: Observation, cfg: HealthConfig) -> Expect:
    """The pin's version, the recorded module type, and the target GPUs nvidia-smi must list."""
    return Expect(cfg.module_version, None, obs.targets)


check_driver_loaded = _driver(driver.check_driver_loaded)
check_module_type = _driver(driver.check_module_type)
check_nvidia_smi = _driver(driver.check_nvidia_smi)
check_gpus = _driver(driver.check_gpus)


def _per_gpu(name: str, obs: Observation, judge: Callable[[GpuReport], tuple[str, str]],
             ok_reason: str) -> CheckResult:
    """Judge each target GPU; the worst status wins and every bad GPU is named."""
    gpus = _target_gpus(obs)
    if not gpus:
        return _r(name, SKIP, "no GPU report")
    results = {g.pci_bus_id: judge(g) for g in gpus}
    order = (FAIL, WARN, OK)
    worst = min((status for status, _ in results.values()), key=order.index)
    if worst == OK:
        return _r(name, OK, ok_reason, gpus={k: v[1] for k, v in results.items()})
    bad = [f"{bus}: {why}" for bus, (status, why) in results.items() if status == worst]
    return _r(name, worst, "; ".join(bad) if len(gpus) > 1 else bad[0].split(": ", 1)[1],
              gpus={k: v[1] for k, v in results.items()})


def check_virtualization(obs: Observation, cfg: HealthConfig) -> CheckResult:
    def judge(g: GpuReport) -> tuple[str, str]:
        mode = g.virtualization_mode or "unknown"
        return (OK, mode) if mode == "VGPU" else (FAIL, f"virtualization mode {mode}, not VGPU")
    return _per_gpu("virtualization", obs, judge, "vGPU guest")


def check_profile(obs: Observation, cfg: HealthConfig) -> CheckResult:
    wanted = cfg.expected_profile or "any RTX Pro 6000 vGPU type"

    def judge(g: GpuReport) -> tuple[str, str]:
        name = g.product_name or "unknown"
        if profile_matches(g.product_name, cfg.expected_profile):
            return OK, name
        return FAIL, f"profile {name!r}, expected {wanted}"
    return _per_gpu("profile", obs, judge, f"profile matches {wanted}")


def check_license(obs: Observation, cfg: HealthConfig) -> CheckResult:
    minimum = timedelta(seconds=cfg.license_min_remaining)
    levels = {LAPSED: FAIL, AT_RISK: WARN, LEASE_OK: OK}

    def judge(g: GpuReport) -> tuple[str, str]:
        level, why = judge_lease(classify_license(g.license_status), obs.at,
                                 min_remaining=minimum, seen=obs.leases.get(g.pci_bus_id))
        return levels[level], why
    return _per_gpu("license", obs, judge, "licensed")


def check_mig(obs: Observation, cfg: HealthConfig) -> CheckResult:
    def judge(g: GpuReport) -> tuple[str, str]:
        vgpu = parse_vgpu_type(g.product_name)
        if vgpu is not None and not vgpu.mig_backed:
            return OK, f"time-sliced vGPU type {vgpu.profile}: no MIG"
        current, pending = g.mig_current or "unknown", g.mig_pending or "unknown"
        if current != "Enabled":
            bad = FAIL if cfg.mig_policy == "fail" else WARN
            return bad, f"MIG mode {current}, expected Enabled (mig.strategy=single)"
        if pending != current:
            return WARN, f"MIG mode {current}, {pending} pending a GPU reset"
        return OK, "Enabled"
    return _per_gpu("mig", obs, judge, "MIG enabled")


def check_gridd(obs: Observation, cfg: HealthConfig) -> CheckResult:
    if obs.gridd == "active":
        return _r("gridd", OK, "nvidia-gridd active")
    if not obs.gridd_unit:
        return _r("gridd", FAIL, "nvidia-gridd.service is not installed (the vGPU stays "
                  "unlicensed)", state=obs.gridd)
    return _r("gridd", FAIL, f"nvidia-gridd is {obs.gridd}", state=obs.gridd)


def check_persistence(obs: Observation, cfg: HealthConfig) -> CheckResult:
    modes = {g.pci_bus_id: g.persistence_mode for g in _target_gpus(obs)}
    if modes and all(m == "Enabled" for m in modes.values()):
        return _r("persistence", OK, "persistence mode enabled", gpus=modes)
    if obs.persistenced == "active":
        return _r("persistence", OK, "nvidia-persistenced active", gpus=modes)
    return _r("persistence", WARN, f"persistence mode not enabled and nvidia-persistenced "
              f"is {obs.persistenced or 'unknown'}", gpus=modes)


def check_graphics(obs: Observation, cfg: HealthConfig) -> CheckResult:
    types = [parse_vgpu_type(g.product_name) for g in _target_gpus(obs)]
    if not any(t and t.series == "Q" for t in types):
        return _r("graphics", SKIP, "not a Q-series (RTX Virtual Workstation) profile")
    missing = [what for what, found in (("Vulkan ICD nvidia_icd.json", obs.vulkan_icd),
                                        ("libGLX_nvidia.so.0", obs.glx_lib)) if found is None]
    if missing:
        return _r("graphics", WARN, f"missing on the host: {', '.join(missing)} "
                  "(Vulkan/OpenGL apps such as Isaac Sim need them)", missing=missing)
    return _r("graphics", OK, "Vulkan ICD and GLX library present",
              vulkan_icd=obs.vulkan_icd, glx_lib=obs.glx_lib)


def check_kernel(obs: Observation, cfg: HealthConfig) -> CheckResult:
    release = obs.kernel_release
    if not release:
        return _r("kernel", SKIP, "host kernel release unknown")
    bad = known_bad_kernel(release)
    if bad:
        return _r("kernel", WARN, f"kernel {release}: {bad[0].problem}; {bad[0].advice}",
                  kernel_release=release, source=bad[0].source)
    return _r("kernel", OK, f"kernel {release} is not a known-bad one", kernel_release=release)


def check_prebuild(obs: Observation, cfg: HealthConfig) -> CheckResult:
    """A failed prebuild for an installed kernel warns: its reboot would rebuild at boot."""
    failed = {rel: e for rel, e in obs.prebuilds.items() if e.get("outcome") == "failed"}
    built = sorted(rel for rel, e in obs.prebuilds.items() if e.get("outcome") == "built"
                   and rel != obs.kernel_release)
    if failed:
        rel, entry = sorted(failed.items())[0]
        return _r("prebuild", WARN, f"driver prebuild for kernel {rel} failed: "
                  f"{entry.get('error') or 'no reason recorded'} (a reboot into it rebuilds "
                  "at boot)", failed=sorted(failed), built=built)
    if built:
        return _r("prebuild", OK, f"driver prebuilt for {', '.join(built)}", built=built)
    return _r("prebuild", OK, "no other kernel to prebuild for")


def check_foreign_driver(obs: Observation, cfg: HealthConfig) -> CheckResult:
    """Another NVIDIA driver warns: the fast path leaves it (only a full install removes it)."""
    found = obs.foreign
    if found is None:
        return _r("foreign_driver", SKIP, "not looked at")
    if not found:
        return _r("foreign_driver", OK, "no other NVIDIA driver installed")
    return _r("foreign_driver", WARN, f"another NVIDIA driver is installed ({found.describe()}): "
              "its DKMS build can replace the GRID modules at a kernel update; remove it on "
              "the node (apt-get purge, dkms remove), the install's fast path leaves it",
              packages=list(found.packages), dkms_versions=list(found.dkms_versions),
              modules=list(found.dkms_modules), aks_prebake=found.aks_prebake)


def check_host_branch(obs: Observation, cfg: HealthConfig) -> CheckResult:
    level, why = judge_guest(cfg.module_version, obs.host_vgpu)
    if level == UNKNOWN:
        return _r("host_branch", SKIP, f"{why}: {obs.host_vgpu_unknown}"
                  if obs.host_vgpu_unknown else why)
    details = obs.host_vgpu.as_dict() if obs.host_vgpu else {}
    status = {VGPU_OK: OK, BEHIND: WARN, REFUSE: FAIL}[level]
    return _r("host_branch", status, why, **details)


def check_handoff(obs: Observation, cfg: HealthConfig) -> CheckResult:
    handoff = obs.handoff
    if handoff is None:
        return _r("handoff", SKIP, "not inspected")
    details = {"marker_present": handoff.marker_present, "marker_valid": handoff.marker_valid,
               "mounted": handoff.mounted}
    if handoff.intact:
        return _r("handoff", OK, handoff.reason, **details)
    return _r("handoff", FAIL, handoff.reason, **details)


CHECKS: tuple[Callable[[Observation, HealthConfig], CheckResult], ...] = (
    check_driver_loaded, check_module_type, check_nvidia_smi, check_gpus, check_virtualization,
    check_profile, check_license, check_mig, check_gridd, check_persistence, check_graphics,
    check_kernel, check_prebuild, check_foreign_driver, check_host_branch, check_handoff,
)


def run_checks(obs: Observation, cfg: HealthConfig) -> tuple[CheckResult, ...]:
    """Every check, in a fixed order; a node without a target GPU has none to run."""
    if not obs.targets:
        return (_r("pci", SKIP, "no target GPU on this node: nothing to check"),)
    return tuple(check(obs, cfg) for check in CHECKS)


def driver_healthy(checks: tuple[CheckResult, ...]) -> bool:
    """The driver works by the one definition install's verify uses (the hand-off may return)."""
    return driver_works(checks)
