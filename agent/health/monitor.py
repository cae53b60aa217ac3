"""The watch loop: check cycles under a deadline, the cached verdict, hand-off self-heal."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from agent.clock import Clock
from agent.driver.license import LeaseBook
from agent.errors import AgentError, LockHeldError
from agent.handoff import inspect_handoff
from agent.health.checks import HealthConfig, driver_healthy, run_checks
from agent.health.observe import Observation, describe, observe, target_slots
from agent.health.verdict import FAIL, CheckResult, Verdict, make_verdict, write_verdict_file
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.pci import PciDevice, TargetSpec

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Health:
    """Everything one check cycle needs; collaborators passed in so tests hand in fakes."""

    root: HostRoot
    runner: HostRunner
    config: HealthConfig
    spec: TargetSpec
    scan_pci: Callable[[], Sequence[PciDevice]]
    command_timeout: float
    clock: Clock  # the app's one clock: verdict stamps, licence expiry, the cache's heartbeat
    leases: LeaseBook = field(default_factory=LeaseBook)  # each GPU's lease across cycles

    def observe(self) -> Observation:
        targets = target_slots(self.scan_pci, self.spec)
        obs = observe(self.root, self.runner, targets=targets,
                      command_timeout=self.command_timeout, at=self.clock.now(),
                      pin_version=self.config.module_version)
        report = obs.smi.report if obs.smi else None
        statuses = {g.pci_bus_id: g.license_status for g in report.gpus} if report else {}
        return replace(obs, leases=self.leases.update(statuses, obs.at))

    def verdict(self, obs: Observation, started: float, began: float,
                facts: dict[str, Any] | None = None) -> Verdict:
        checks = run_checks(obs, self.config)
        return make_verdict(checks, started=started, duration=self.clock.monotonic() - began,
                            applicable=bool(obs.targets), facts={**describe(obs), **(facts or {})})

    def check_once(self) -> Verdict:
        started, began = self.clock.time(), self.clock.monotonic()
        return self.verdict(self.observe(), started, began)


@dataclass(frozen=True)
class Healer:
    """The hand-off's repair tools (agent/handoff.py, agent/host/lock.py)."""

    publish: Callable[[HostRoot, HostRunner], bool]
    remove_marker: Callable[[HostRoot], bool]
    lock: Callable[..., Any]  # host_lock(root, *, wait) context manager


def real_healer() -> Healer:
    from agent.handoff import publish, remove_marker
    from agent.host.lock import host_lock

    return Healer(publish=publish, remove_marker=remove_marker, lock=host_lock)


def heal(health: Health, healer: Healer, obs: Observation,
         checks: tuple[CheckResult, ...]) -> str | None:
    """Restore the hand-off for a healthy driver; withdraw the marker when the driver is gone."""
    handoff = obs.handoff
    if not obs.targets or handoff is None:
        return None
    gone = not obs.module.loaded and (obs.smi is None or obs.smi.exit_code != 0)
    wants_publish = driver_healthy(checks) and not handoff.intact
    wants_withdraw = gone and handoff.marker_present
    if not (wants_publish or wants_withdraw):
        return None
    try:
        with healer.lock(health.root, wait=False):
            if wants_publish:
                changed = healer.publish(health.root, health.runner)
                action = "published" if changed else None
            else:
                action = "marker_removed" if healer.remove_marker(health.root) else None
    except LockHeldError as exc:
        log.info("self_heal_deferred", reason=exc.message)
        return None
    except (AgentError, OSError) as exc:
        log.warning("self_heal_failed", error=str(exc))
        return "failed"
    log.info("self_heal", action=action, changed=action is not None)
    return action


@dataclass
class VerdictCache:
    """The last verdict and the loop's heartbeat, shared between the loop and the server.

    Its clock is the app's: /status and /metrics read ages from it, so they cannot disagree.
    """

    clock: Clock
    verdict: Verdict | None = None
    heartbeat: float = field(init=False)
    cycles: int = 0
    timeouts: int = 0
    heals: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.heartbeat = self.clock.monotonic()

    def age(self, heartbeat: float) -> float:
        """Seconds since that heartbeat, on the cache's clock."""
        return self.clock.monotonic() - heartbeat

    def put(self, verdict: Verdict, *, timed_out: bool = False, healed: str | None = None) -> None:
        with self._lock:
            self.verdict = verdict
            self.heartbeat = self.clock.monotonic()
            self.cycles += 1
            self.timeouts += int(timed_out)
            if healed:
                self.heals[healed] = self.heals.get(healed, 0) + 1

    def snapshot(self) -> tuple[Verdict | None, float, int, int, dict[str, int]]:
        with self._lock:
            return self.verdict, self.heartbeat, self.cycles, self.timeouts, dict(self.heals)


def _cycle_with_heal(health: Health, healer: Healer | None) -> tuple[Verdict, str | None]:
    started, began = health.clock.time(), health.clock.monotonic()
    obs = health.observe()
    checks = run_checks(obs, health.config)
    action = heal(health, healer, obs, checks) if healer else None
    if action in ("published", "marker_removed"):
        obs = replace(obs, snapshot=replace(obs.snapshot, handoff=inspect_handoff(health.root)))
    facts = {"self_heal": action} if action else None
    return health.verdict(obs, started, began, facts), action


def _lower_priority(nice: int) -> None:
    """Renice this thread only (a Linux thread is a task); the processes it forks inherit it."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # best effort: a seccomp profile may forbid it
        log.debug("check_priority_unchanged", error=exc.strerror)


@dataclass
class Monitor:
    """Runs cycles every interval (+ jitter) until `stop` is set; never unloads or unmounts."""

    health: Health
    cache: VerdictCache
    interval: float
    jitter: float
    check_timeout: float
    healer: Healer | None = None
    verdict_file: Path | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)
    check_nice: int = 10  # the check thread and the host commands it starts yield to probes
    _worker: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.cache.clock is not self.health.clock:
            raise ValueError("the monitor's cache and checks must share the app's one clock")

    @property
    def stale_after(self) -> float:
        """How old a verdict may get before the loop counts as stuck (livez, probe live)."""
        return self.interval + self.jitter + self.check_timeout + 30.0

    def _timed_out(self, started: float, why: str) -> Verdict:
        check = CheckResult("cycle", FAIL, why, {"timeout_seconds": self.check_timeout})
        return make_verdict((check,), started=started,
                            duration=self.health.clock.time() - started)

    def step(self) -> Verdict:
        """One cycle in a worker thread, cut at the deadline; the loop goes on either way."""
        started = self.health.clock.time()
        if self._worker is not None and self._worker.is_alive():
            verdict = self._timed_out(started, "the previous check cycle is still running")
            return self._publish(verdict, timed_out=True, healed=None)
        box: dict[str, Any] = {}

        def work() -> None:
            _lower_priority(self.check_nice)
            try:
                box["result"] = _cycle_with_heal(self.health, self.healer)
            except Exception as exc:  # a bug in a check must not stop the sidecar
                log.exception("check_cycle_crashed", error=repr(exc))
                box["error"] = exc

        worker = threading.Thread(target=work, name="grid-agent-check", daemon=True)
        self._worker = worker
        worker.start()
        # Waiting on a real thread takes real time: the deadline is not the app's clock.
        if not self._wait_worker(worker, time.monotonic() + self.check_timeout):
            return self.cache.snapshot()[0] or self._timed_out(started, "stopped")
        if worker.is_alive():
            why = f"check cycle did not finish within {self.check_timeout:g}s"
            return self._publish(self._timed_out(started, why), timed_out=True, healed=None)
        if "error" in box:
            crash = CheckResult("cycle", FAIL, f"check cycle crashed: {box['error']!r}")
            return self._publish(make_verdict(
                (crash,), started=started, duration=self.health.clock.time() - started),
                healed=None)
        verdict, action = box["result"]
        return self._publish(verdict, healed=action)

    def _wait_worker(self, worker: threading.Thread, deadline: float) -> bool:
        """Join in short slices so a SIGTERM mid-cycle is honoured; False when stopped."""
        while worker.is_alive() and time.monotonic() < deadline:
            if self.stop.is_set():
                return False
            worker.join(min(0.1, max(0.0, deadline - time.monotonic())))
        return True

    def _publish(self, verdict: Verdict, *, timed_out: bool = False,
                 healed: str | None) -> Verdict:
        self.cache.put(verdict, timed_out=timed_out, healed=healed)
        if self.verdict_file is not None:
            try:
                write_verdict_file(self.verdict_file, verdict, stale_after=self.stale_after,
                                   now=self.health.clock.time())
            except OSError as exc:
                log.warning("verdict_file_unwritable", path=str(self.verdict_file),
                            error=exc.strerror)
        log.info("health_verdict", state=verdict.state, ready=verdict.ready,
                 reason=verdict.reason(), seconds=round(verdict.duration, 3))
        return verdict

    def run(self, *, max_cycles: int | None = None) -> None:
        """Loop until stopped; SIGTERM only sets `stop`, so it ends within a second."""
        done = 0
        while not self.stop.is_set():
            self.step()
            done += 1
            if max_cycles is not None and done >= max_cycles:
                return
            self.stop.wait(self.interval + self.rng.uniform(0, self.jitter))
        log.info("watch_stopped", cycles=done)
