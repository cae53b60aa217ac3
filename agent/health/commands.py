"""What the `check`, `watch` and `probe` commands do, behind the thin click layer."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

import structlog

from agent.catalog import module_version
from agent.clock import Clock, SystemClock
from agent.errors import UnhealthyError
from agent.health.checks import HealthConfig
from agent.health.monitor import Healer, Health, Monitor, VerdictCache, real_healer
from agent.health.verdict import Verdict, probe_verdict_file
from agent.host import open_doors
from agent.pci import PciDevice
from agent.settings import Settings

log = structlog.get_logger(__name__)

Echo = Callable[[str], None]
ScanPci = Callable[[], Sequence[PciDevice]]


def _real_scan() -> Sequence[PciDevice]:
    from agent.host.udev import scan_pci

    return scan_pci()


def build_health(settings: Settings, scan_pci: ScanPci | None = None,
                 clock: Clock | None = None) -> Health:
    root, runner = open_doors(settings)
    config = HealthConfig(
        module_version=module_version(settings.driver_version),
        expected_profile=settings.expected_profile,
        mig_policy=settings.mig_policy,
        license_min_remaining=settings.license_min_remaining,
    )
    # A hung nvidia-smi is killed by the runner before the cycle's own deadline.
    timeout = min(settings.command_timeout, settings.check_timeout)
    return Health(root, runner, config, settings.target_spec, scan_pci or _real_scan, timeout,
                  clock or SystemClock())


def format_table(verdict: Verdict) -> str:
    rows = [f"{'CHECK':<15} {'STATUS':<6} REASON"]
    rows += [f"{c.name:<15} {c.status:<6} {c.reason}" for c in verdict.checks]
    rows.append(f"verdict: {verdict.state} ({'ready' if verdict.ready else 'not ready'}) "
                f"in {verdict.duration:.2f}s")
    return "\n".join(rows)


def check_command(settings: Settings, *, as_json: bool, echo: Echo,
                  health: Health | None = None) -> Verdict:
    """Run the checks once (no self-heal); exit 9 through UnhealthyError when not ready."""
    health = health or build_health(settings)
    monitor = Monitor(health, VerdictCache(health.clock), interval=0, jitter=0,
                      check_timeout=settings.check_timeout)
    verdict = monitor.step()
    echo(json.dumps(verdict.to_dict(), indent=2) if as_json else format_table(verdict))
    if not verdict.ready:
        raise UnhealthyError(f"node unhealthy: {verdict.reason()}")
    return verdict


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("watch_signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def watch_command(settings: Settings, *, health: Health | None = None,
                  healer: Healer | None = None, max_cycles: int | None = None,
                  install_signals: bool = True,
                  background: Sequence[Callable[[threading.Event], None]] = ()) -> Monitor:
    """The sidecar loop; SIGTERM ends it (never unloading or unmounting anything).

    `background`: loops run in daemon threads until the same stop (the prebuild watcher,
    composed by the CLI: health never imports install).
    """
    from agent.health.server import HealthApp, HealthServer

    health = health or build_health(settings)
    monitor = Monitor(health, VerdictCache(health.clock),
                      interval=settings.watch_interval, jitter=settings.watch_jitter,
                      check_timeout=settings.check_timeout,
                      healer=(healer or real_healer()) if settings.self_heal else None,
                      verdict_file=settings.verdict_file)
    if install_signals:
        _on_signals(monitor.stop)
    for loop in background:
        threading.Thread(target=loop, args=(monitor.stop,), name="grid-agent-background",
                         daemon=True).start()
    # A probe must not wait out the default 5 ms GIL slice of a check thread parsing XML.
    sys.setswitchinterval(0.0005)
    server = None
    if settings.listen is not None:
        app = HealthApp(monitor.cache, stale_after=monitor.stale_after)
        server = HealthServer(app, *settings.listen).start()
    try:
        monitor.run(max_cycles=max_cycles)
    finally:
        if server is not None:
            server.close()
    return monitor


def probe_command(settings: Settings, kind: str, *, echo: Echo,
                  clock: Clock | None = None) -> None:
    """Answer an exec probe from the verdict file; never runs a check."""
    answer = probe_verdict_file(settings.verdict_file, kind, now=(clock or SystemClock()).time())
    if not answer.ok:
        raise UnhealthyError(f"{kind}: {answer.reason}")
    echo(f"{kind}: {answer.reason}")
