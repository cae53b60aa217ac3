"""Staged driver upgrades through the cluster's reboot coordinator (kured), not a person.

A new pin on a node whose old driver is busy cannot be installed until a reboot. With
`GRID_AGENT_REBOOT_SENTINEL` set (e.g. `/var/run/reboot-required`, the file kured
watches), the init container stages the upgrade instead of exiting 6:

1. the new installer is already downloaded and verified into the host cache (the
   download step ran before the unload was refused);
2. state.json `staged` records the pin (version, sha256, config digest, reason, since);
3. the old driver must not come back at boot (it would be loaded, and trusted by the
   GPU Operator's validator, before the agent runs): `/etc/modprobe.d/` gets a blacklist
   of the stack's aliases (udev's autoload; an explicit `modprobe nvidia` still works)
   and `nvidia-persistenced` is disabled (it would load the old module by name);
4. the sentinel is written (Ubuntu's `*** System restart required ***` text) and the
   staged package named in `<sentinel>.pkgs`, as update-notifier does;
5. the termination message says so at once (`staged_line`): the kubelet shows it only
   once the container has ended, and a reboot or a deleted pod may kill it mid-wait;
6. the init container waits: a log line every `GRID_AGENT_WATCH_INTERVAL`, and when the
   GPU workloads are gone (the node was drained) it installs without a reboot. SIGTERM
   there ends it with 128 + the signal and a line that still says what is staged.

After the reboot no NVIDIA module is loaded, so the install takes the cache's installer
before any GPU workload; a successful install of the staged pin clears all of the above.
Nothing here touches the running driver or its files; each write is atomic and
idempotent, so a SIGKILL anywhere leaves a state a re-run completes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from agent.driver.record import read_record
from agent.driver.sections import read_section, write_section
from agent.errors import AgentError, HostCommandError, InstallError, LockHeldError, Terminated
from agent.host.lock import host_lock
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install.modules import in_use_reasons

log = structlog.get_logger(__name__)

SECTION = "staged"
BLACKLIST = "/etc/modprobe.d/grid-agent-staged-upgrade.conf"
BLACKLIST_TEXT = ("# grid-agent: a driver upgrade is staged; the old driver must not load at\n"
                  "# boot before the agent installs the new one. Removed after that install.\n"
                  + "".join(f"blacklist {m}\n" for m in ("nvidia", "nvidia_drm", "nvidia_modeset",
                                                          "nvidia_uvm", "nvidia_peermem")))
SENTINEL_TEXT = "*** System restart required ***\n"  # what Ubuntu's update-notifier writes
# The kubelet keeps 4096 bytes of a termination message: the many PIDs of a busy node must
# not push out the end of the line.
REASON_MAX = 1000
WAIT_REMEDY = ("nothing was left half-done: state.json keeps `staged`, the sentinel and the "
               "boot blacklist stay; after the reboot the next run installs from the cache")


class Staged(AgentError):
    """Raised inside the lock; the caller waits outside it (exit 6 if it ever surfaces)."""

    exit_code = InstallError.exit_code


class WaitStopped(Terminated):
    """SIGTERM/SIGINT during the staged wait: 128 + the signal, the staging left in place."""

    remedy = WAIT_REMEDY

    def __init__(self, signum: int, info: dict[str, Any]) -> None:
        super().__init__(signum, signal.Signals(signum).name)
        waited = info.get("waiting_seconds")
        after = f" after {waited} s" if isinstance(waited, int) else ""
        self.message = f"{self.message}{after}: {staged_line(info)}"
        self.args = (self.message,)


def staged_line(info: dict[str, Any]) -> str:
    """One line for `kubectl describe pod`: the staged pin, why, and what the node waits for."""
    reason = str(info.get("reason") or "the old driver is in use")
    if len(reason) > REASON_MAX:
        reason = reason[:REASON_MAX] + "..."
    older = info.get("from_version")
    return (f"upgrade to {info.get('version')}{f' (from {older})' if older else ''} staged, "
            f"waiting for reboot: {reason}; {info.get('sentinel')} is written and the node "
            f"waits for the reboot coordinator (kured) to drain and reboot it, then the new "
            f"driver installs from the cache")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _lines(root: HostRoot, host_path: str) -> list[str]:
    data = root.read_nofollow(host_path)
    return data.decode(errors="replace").splitlines() if data is not None else []


def pkgs_line(version: str) -> str:
    return f"nvidia-grid-driver-{version}"


def staged_info(root: HostRoot) -> dict[str, Any] | None:
    found = read_section(root, SECTION)
    return found if isinstance(found, dict) else None


def stage(root: HostRoot, runner: HostRunner, *, sentinel: str, pin: Any, run_path: str,
          reason: str) -> dict[str, Any]:
    """Record, blacklist, sentinel: in this order, each step idempotent."""
    old = read_record(root)
    version = pin.release.version
    info = staged_info(root) or {}
    if info.get("config_digest") != pin.digest:
        info = {"version": version, "sha256": pin.release.sha256, "config_digest": pin.digest,
                "from_version": old.version if old else None, "installer": run_path,
                "staged_at": _now(), "sentinel": sentinel}
    info["reason"] = reason
    write_section(root, SECTION, info)
    root.write_file(BLACKLIST, BLACKLIST_TEXT)
    try:
        runner.run(["systemctl", "disable", "nvidia-persistenced.service"], check=False,
                   timeout=60)
    except HostCommandError as exc:  # no systemd: nothing starts it at boot anyway
        log.debug("persistenced_not_disabled", error=exc.message)
    write_sentinel(root, sentinel, version)
    log.warning("upgrade_staged", version=version, from_version=info.get("from_version"),
                sentinel=sentinel, reason=reason, changed=True,
                hint="the reboot coordinator (kured) reboots the node; the new driver "
                     "installs from the cache before any GPU workload")
    return info


def write_sentinel(root: HostRoot, sentinel: str, version: str) -> None:
    """Through the host door (links resolved inside the root: /var/run is /run there)."""
    if root.read_nofollow(sentinel) is None:
        root.write_file(sentinel, SENTINEL_TEXT)
    lines = _lines(root, sentinel + ".pkgs")
    if pkgs_line(version) not in lines:
        root.write_file(sentinel + ".pkgs", "".join(f"{ln}\n" for ln in
                                                     [*lines, pkgs_line(version)]))


def clear(root: HostRoot, installed_digest: str) -> bool:
    """After an install: the staged pin (or any older staging) is done; undo the boot
    guards, and the sentinel when nothing else asked for the reboot. True if it acted."""
    info = staged_info(root)
    if info is None and root.read_nofollow(BLACKLIST) is None:
        return False
    root.unlink(BLACKLIST)
    if info is not None:
        sentinel = info.get("sentinel")
        if sentinel:
            _clear_sentinel(root, str(sentinel), str(info.get("version")))
        write_section(root, SECTION, None)
    log.info("staged_upgrade_cleared", version=(info or {}).get("version"),
             installed=info is not None and info.get("config_digest") == installed_digest,
             changed=True)
    return True


def _clear_sentinel(root: HostRoot, sentinel: str, version: str) -> None:
    rest = [ln for ln in _lines(root, sentinel + ".pkgs") if ln != pkgs_line(version)]
    if rest:
        root.write_file(sentinel + ".pkgs", "".join(f"{ln}\n" for ln in rest))
        return  # someone else (a kernel update) still wants the reboot
    root.unlink(sentinel + ".pkgs")
    if root.read_nofollow(sentinel) == SENTINEL_TEXT.encode():
        root.unlink(sentinel)


@dataclass
class Waiter:
    """The init container's wait for the reboot; returns when the GPU is free instead."""

    root: HostRoot
    interval: float
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    last: dict[str, Any] | None = None  # the latest `staged` written, for the stop's line

    def wait(self, info: dict[str, Any]) -> None:
        """Until the GPU is free; a signal raises WaitStopped (nothing here is half-written:
        state.json's writes are atomic)."""
        try:
            self._wait(info)
        except Terminated as exc:
            raise WaitStopped(exc.signum, self.last or info) from None

    def _wait(self, info: dict[str, Any]) -> None:
        begun = self.clock()
        while True:
            users = in_use_reasons(self.root)
            if not users:
                log.info("staged_upgrade_unblocked", version=info.get("version"),
                         reason="the old driver is no longer in use: installing now")
                return
            waited = round(self.clock() - begun)
            info = {**(staged_info(self.root) or info), "waiting_seconds": waited,
                    "blocked_by": users, "last_check": _now()}
            self.last = info
            self._write(info)
            log.warning("upgrade_staged_waiting", version=info.get("version"),
                        from_version=info.get("from_version"), sentinel=info.get("sentinel"),
                        waited_seconds=waited, blocked_by=users,
                        hint="waiting for the reboot coordinator to drain and reboot the node")
            self.sleep(self.interval)

    def _write(self, info: dict[str, Any]) -> None:
        """The status, under the host lock as every state.json writer (sections.py); when a
        debug-node run holds it, this round's status is skipped, never written over its."""
        try:
            with host_lock(self.root, wait=False):
                write_section(self.root, SECTION, info)
        except LockHeldError:
            log.info("staged_status_deferred", reason="another grid-agent holds the host lock")
