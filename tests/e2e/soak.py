"""The hand-off soak (issue 12): `watch` self-heals for many cycles against a hostile
driver root on the simulated node; the host's mount count must stay what it was after the
first heal, and the agent's RSS must not grow. Used by tests/e2e and `scripts/bench soak`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.host.paths import DRIVER_ROOT, MARKER
from tests.e2e.healthrun import python_pid, start_watch
from tests.e2e.installrun import driver_root_mounted

HOSTILE = ("link-to-root", "link-to-dir", "tmpfs")
WARM_CYCLES = 10  # RSS is measured from here: imports and first-cycle caches are done


def mount_count(node) -> int:
    return len(node.mountinfo().splitlines())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def make_hostile(node, how: str) -> None:
    """Take the agent's hand-off down and leave `how` at the driver root, marker gone."""
    while driver_root_mounted(node):
        node.exec(["umount", "--lazy", DRIVER_ROOT])
    node.exec(["rm", "-f", MARKER])
    node.exec(["rm", "-rf", "--one-file-system", DRIVER_ROOT])
    if how == "link-to-root":
        node.exec(["ln", "-s", "/", DRIVER_ROOT])
    elif how == "link-to-dir":
        node.exec(["mkdir", "-p", "/srv/decoy"])
        node.exec(["ln", "-s", "/srv/decoy", DRIVER_ROOT])
    elif how == "tmpfs":
        node.exec(["mkdir", "-p", DRIVER_ROOT])
        node.exec(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", DRIVER_ROOT])
    else:
        raise ValueError(f"unknown hostile hand-off {how!r}; one of {HOSTILE}")


@dataclass
class SoakResult:
    how: str
    cycles: int
    mounts_before: int  # before the watch started (hostile state in place)
    mounts_first: int  # after the first cycle that acted (the first heal, or refusal)
    mounts_max: int
    mounts_last: int
    rss_warm_kib: int
    rss_last_kib: int
    heals: dict[str, int] = field(default_factory=dict)
    sabotaged: int = 0  # how often the marker was taken away again meanwhile
    crashes: int = 0
    seconds: float = 0.0

    @property
    def rss_growth_mib(self) -> float:
        return (self.rss_last_kib - self.rss_warm_kib) / 1024

    @property
    def constant(self) -> bool:
        return self.mounts_first == self.mounts_max == self.mounts_last


def soak(node, env: dict[str, str], tmp: Path, *, how: str, cycles: int,
         interval: float = 0.1) -> SoakResult:
    """Run `watch` for `cycles` check cycles against the hostile driver root `how`.

    With a link there the first heal replaces it and mounts; the marker is then taken away
    again and again, so every later cycle heals again and must mount nothing more. With a
    foreign tmpfs every cycle is refused and must mount nothing at all.
    """
    make_hostile(node, how)
    before = mount_count(node)
    started = time.monotonic()
    watch = start_watch(node, env, tmp, GRID_AGENT_WATCH_INTERVAL=str(interval),
                        GRID_AGENT_CHECK_TIMEOUT="30")
    try:
        watch.wait_event("self_heal" if how != "tmpfs" else "self_heal_failed", timeout=120)
        first = mount_count(node)
        watch.wait_event("health_verdict", count=WARM_CYCLES, timeout=300)
        pid = python_pid(watch)
        rss_warm, peak, sabotaged = rss_kib(pid), first, 0
        while len(watch.named("health_verdict")) < cycles:
            if watch.proc.poll() is not None:
                raise AssertionError(f"watch exited {watch.proc.returncode} during the soak")
            with contextlib.suppress(FileNotFoundError):
                node.path(MARKER).unlink()
                sabotaged += 1
            peak = max(peak, mount_count(node))
            time.sleep(interval)
        result = SoakResult(
            how=how, cycles=len(watch.named("health_verdict")), mounts_before=before,
            mounts_first=first, mounts_max=max(peak, mount_count(node)),
            mounts_last=mount_count(node), rss_warm_kib=rss_warm, rss_last_kib=rss_kib(pid),
            sabotaged=sabotaged, crashes=len(watch.named("check_cycle_crashed")),
            seconds=time.monotonic() - started)
        for event in watch.named("self_heal"):
            result.heals[str(event.get("action"))] = result.heals.get(str(event.get("action")),
                                                                      0) + 1
        result.heals["refused"] = len(watch.named("self_heal_failed"))
    finally:
        watch.stop()
    return result
