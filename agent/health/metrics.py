"""Prometheus metrics built from the cached verdict at scrape time (its own registry)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from agent import __version__
from agent.health.monitor import VerdictCache
from agent.health.verdict import STATUSES, Verdict

P = "grid_agent"


def _gauge(name: str, doc: str, value: float | None = None,
           labels: list[str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{P}_{name}", doc, labels=labels)
    if value is not None:
        family.add_metric([], value)
    return family


def _verdict_metrics(verdict: Verdict) -> Iterator[Metric]:
    yield _gauge("driver_ready", "1 when the last verdict is ready (not_applicable counts)",
                 float(verdict.ready))
    yield _gauge("applicable", "1 when this node has a target GPU",
                 float(verdict.state != "not_applicable"))
    status = _gauge("check_status", "1 for each check's current status (ok, warn, fail, skip)",
                    labels=["check", "status"])
    for check in verdict.checks:
        for name in STATUSES:
            status.add_metric([check.name, name], float(check.status == name))
    yield status
    yield _gauge("last_check_timestamp_seconds", "when the last check cycle started",
                 verdict.checked_at)
    yield _gauge("last_check_duration_seconds", "how long the last check cycle took",
                 verdict.duration)
    yield from _fact_metrics(verdict.facts)


def _fact_metrics(facts: dict[str, Any]) -> Iterator[Metric]:
    driver = InfoMetricFamily(f"{P}_driver", "the loaded driver",
                              labels=["version", "module_type", "cuda_version"])
    if facts.get("module_version") or facts.get("driver_version"):
        driver.add_metric([], {"version": str(facts.get("driver_version") or
                                              facts.get("module_version")),
                               "module_type": str(facts.get("module_type") or ""),
                               "cuda_version": str(facts.get("cuda_version") or "")})
    yield driver
    host = InfoMetricFamily(f"{P}_vgpu_host", "the hypervisor's vGPU manager, from the vGPU's "
                            "PCI config space (absent when unknown)")
    if facts.get("host_vgpu"):
        found = facts["host_vgpu"]
        host.add_metric([], {"host_version": str(found.get("version") or ""),
                             "host_branch": str(found.get("branch") or ""),
                             "vgpu_release": str(found.get("vgpu_release") or "")})
    yield host
    yield from _gpu_metrics(facts.get("gpus") or [])
    yield from _install_metrics(facts.get("install"))
    yield from _prebuild_metrics(facts.get("prebuilds") or {})


def _gpu_metrics(gpus: list[dict[str, Any]]) -> Iterator[Metric]:
    info = InfoMetricFamily(f"{P}_gpu", "each GPU nvidia-smi reports and its vGPU profile")
    licensed = _gauge("license_licensed", "1 when the GPU's vGPU licence status is Licensed",
                      labels=["pci_bus_id", "state"])
    expiry = _gauge("license_expiry_timestamp_seconds",
                    "licence expiry (absent when permanent or unknown)", labels=["pci_bus_id"])
    for gpu in gpus:
        bus = str(gpu["pci_bus_id"])
        info.add_metric([], {"pci_bus_id": bus, "product_name": str(gpu.get("product_name") or ""),
                             "profile": str(gpu.get("profile") or ""),
                             "virtualization_mode": str(gpu.get("virtualization_mode") or ""),
                             "mig": str(gpu.get("mig") or "")})
        state = str(gpu.get("license_state") or "unknown")
        licensed.add_metric([bus, state], float(state == "licensed"))
        if gpu.get("license_expiry") is not None:
            expiry.add_metric([bus], float(gpu["license_expiry"]))
    yield from (info, licensed, expiry)


def _epoch(iso: object) -> float | None:
    """An ISO 8601 time from state.json as epoch seconds (None when absent or not a time)."""
    try:
        when = datetime.fromisoformat(str(iso))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _install_metrics(install: dict[str, Any] | None) -> Iterator[Metric]:
    # No time in a label: a label value that changes on each install is a new series each
    # time; the finish time is its own gauge.
    info = InfoMetricFamily(f"{P}_install", "the last install's outcome (state.json)")
    duration = _gauge("install_duration_seconds", "how long the last install took")
    code = _gauge("install_exit_code", "the last install's exit code")
    finished = _gauge("install_finished_timestamp_seconds", "when the last install finished")
    if install:
        info.add_metric([], {"outcome": str(install.get("outcome") or ""),
                             "version": str(install.get("version") or ""),
                             "module_type": str(install.get("module_type") or "")})
        duration.add_metric([], float(install.get("duration_seconds") or 0.0))
        code.add_metric([], float(install.get("exit_code") or 0))
        when = _epoch(install.get("finished_at"))
        if when is not None:
            finished.add_metric([], when)
    yield from (info, duration, code, finished)


def _prebuild_metrics(prebuilds: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """One series per kernel release prebuilt for (state.json `prebuilds`): 1 built, 0 failed."""
    success = _gauge("prebuild_success", "1 when the driver was prebuilt for this kernel "
                     "release, 0 when that prebuild failed", labels=["kernel_release"])
    for release, entry in sorted(prebuilds.items()):
        if entry.get("outcome") in ("built", "failed"):
            success.add_metric([release], float(entry["outcome"] == "built"))
    yield success


class VerdictCollector:
    """Reads the cache on each scrape, so /metrics never runs a check itself."""

    def __init__(self, cache: VerdictCache, *, stale_after: float) -> None:
        self.cache, self.stale_after = cache, stale_after

    def collect(self) -> Iterator[Metric]:
        verdict, heartbeat, cycles, timeouts, heals = self.cache.snapshot()
        build = InfoMetricFamily(f"{P}_build", "the agent's version")
        build.add_metric([], {"version": __version__})
        yield build
        yield _gauge("loop_alive", "1 while the watch loop keeps producing verdicts",
                     float(self.cache.age(heartbeat) <= self.stale_after))
        yield CounterMetricFamily(f"{P}_check_cycles", "check cycles run", value=cycles)
        yield CounterMetricFamily(f"{P}_check_timeouts", "check cycles cut by the deadline",
                                  value=timeouts)
        heal = CounterMetricFamily(f"{P}_self_heal", "hand-off repairs by action",
                                   labels=["action"])
        for action, count in sorted(heals.items()):
            heal.add_metric([action], count)
        yield heal
        if verdict is not None:
            yield from _verdict_metrics(verdict)


def make_registry(cache: VerdictCache, *, stale_after: float) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VerdictCollector(cache, stale_after=stale_after))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
