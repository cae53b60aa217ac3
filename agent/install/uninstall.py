"""`uninstall`: withdraw the hand-off, stop the daemons, unload, remove the driver and our state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog

from agent.driver.record import read_record, remove_record
from agent.errors import AgentError, HostCommandError, HostCommandMissing, InstallError
from agent.host.paths import CACHE_DIR, SMI
from agent.host.procs import refuse_running_installer
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install import installer as inst
from agent.install import staging, upgrade
from agent.install.kit import Kit
from agent.install.modules import DAEMON_STOP_WAIT, stop_driver_daemons
from agent.settings import Settings

log = structlog.get_logger(__name__)

UNINSTALLER = "/usr/bin/nvidia-uninstall"
UNINSTALL_LOG = "/var/log/nvidia-uninstall.log"


@dataclass
class UninstallReport:
    changed: list[str] = field(default_factory=list)  # the steps that changed the host

    def lines(self) -> list[str]:
        done = ", ".join(self.changed) or "nothing (already uninstalled)"
        return [f"uninstall finished; changed: {done}"]


def stop_daemons(root: HostRoot, runner: HostRunner, *,
                 wait: float = DAEMON_STOP_WAIT) -> bool:
    """Stop and disable gridd and persistenced (modules.stop_driver_daemons, disable=True)."""
    return bool(stop_driver_daemons(root, runner, disable=True, wait=wait))


def _cached_runs(root: HostRoot) -> list[Path]:
    """Verified cache entries (`<sha256>/<file>.run`), newest first; never a private copy."""
    try:
        cache = root.real_dir(CACHE_DIR)
    except FileNotFoundError:
        return []
    runs = [p for p in cache.glob("*/*.run")
            if staging.is_cache_key(p.parent.name) and not p.is_symlink() and p.is_file()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def uninstaller_argv(root: HostRoot, version: str | None) -> list[str] | None:
    """The installed driver's own uninstaller, else the cached .run's `--uninstall` (the
    recorded `version`'s when the cache has it)."""
    if root.exists(UNINSTALLER):
        return [UNINSTALLER, "--silent"]
    runs = _cached_runs(root)
    matching = [p for p in runs if version and version in p.name] or runs
    if not matching:
        return None
    return ["sh", inst.host_path_of(root, matching[0]), "--uninstall", "--silent"]


def _run_uninstaller(root: HostRoot, runner: HostRunner, argv: list[str],
                     timeout: float) -> None:
    """Run it with its log written privately, then published to UNINSTALL_LOG by rename.

    The uninstaller (root) opens its log with fopen("w"), following links, and /var/log is
    group-writable on Ubuntu (syslog): a link planted there would steer a root write
    (issue 12). So the log goes to a fresh root-only directory (beside the verified private
    copy of a cached .run), as the installer's does.
    """
    inst.set_aside_old_log(root, UNINSTALL_LOG)  # its ERROR lines are this run's
    with contextlib.ExitStack() as stack:
        if argv[0] == "sh":  # what runs is what was verified
            private = stack.enter_context(staging.verified_copy(root, argv[1]))
            argv = ["sh", private, *argv[2:]]
            own_log = inst.private_log(private, UNINSTALL_LOG)
        else:
            stage = stack.enter_context(staging.private_stage(root))
            own_log = f"{stage}/{PurePosixPath(UNINSTALL_LOG).name}"
        try:
            runner.run([*argv, f"--log-file-name={own_log}"], timeout=timeout)
        finally:
            inst.publish_log(root, own_log, UNINSTALL_LOG)


def remove_driver(root: HostRoot, runner: HostRunner, *, timeout: float) -> bool:
    """Run the uninstaller when a driver is on disk; exit 6 with its ERROR lines on failure."""
    record = read_record(root)
    if not root.exists(SMI) and record is None:
        return False
    argv = uninstaller_argv(root, record.version if record else None)
    if argv is None:
        raise InstallError(f"no uninstaller: neither {UNINSTALLER} nor a cached .run in "
                           f"{CACHE_DIR}", remedy="run `grid-agent fetch` first, then retry")
    try:
        _run_uninstaller(root, runner, argv, timeout)
    except HostCommandError as exc:
        text = (root.read_nofollow(UNINSTALL_LOG, limit=inst.MAX_LOG_BYTES) or b"").decode(
            errors="replace")
        why = " | ".join(inst.error_lines(text) or inst.error_lines(
            exc.stdout + "\n" + exc.stderr)) or exc.message
        raise InstallError(f"driver uninstaller failed: {why}",
                           remedy=f"see {UNINSTALL_LOG} on the node") from exc
    return True


def purge_cache(root: HostRoot) -> bool:
    """Empty the download cache (the directory stays); a linked or foreign cache is refused,
    so `--purge` never empties a link's target (issue 12)."""
    return root.empty_dir(CACHE_DIR) > 0


def _unload(root: HostRoot, runner: HostRunner, kit: Kit) -> bool:
    try:
        # No version is wanted, so every loaded NVIDIA module counts as stale.
        return kit.unload_stale(root, runner, want_version="")
    except InstallError as exc:
        # The uninstaller cannot remove a driver in use either: stop here, withdrawn from
        # the operator and with the daemons stopped, and say what holds the GPU.
        raise InstallError(
            f"{exc.message.split(';')[0]}; the hand-off is withdrawn and the daemons are "
            "stopped, but the driver stays installed",
            remedy="stop the GPU workloads (drain the node), then run uninstall again") from exc


def _forget(root: HostRoot) -> bool:
    """state.json, and a staged upgrade's boot guards and sentinel (upgrade.py)."""
    staged = upgrade.clear(root, "")
    return remove_record(root) or staged


def uninstall(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit, *,
              purge: bool) -> UninstallReport:
    """Each step is idempotent: a second uninstall changes nothing."""
    report = UninstallReport()
    steps: list[tuple[str, Callable[[], bool]]] = [
        ("unpublish", lambda: kit.unpublish(root, runner)),
        ("stop_daemons", lambda: stop_daemons(root, runner)),
        ("unload", lambda: _unload(root, runner, kit)),
        ("uninstaller", lambda: remove_driver(root, runner, timeout=settings.install_timeout)),
        ("record", lambda: _forget(root)),
    ]
    if purge:
        steps.append(("purge", lambda: purge_cache(root)))
    wait = settings.wait_lock
    with kit.lock(root, wait=wait, timeout=settings.install_timeout if wait else None):
        refuse_running_installer(root)  # never uninstall under a running installer
        for name, action in steps:
            log.info("step_started", name=name)
            try:
                try:
                    changed = bool(action())
                except HostCommandMissing as exc:
                    raise exc.for_step(name, InstallError) from exc
            except AgentError as exc:
                log.error("step_failed", name=name, error=exc.line())
                raise
            log.info("step_finished", name=name, changed=changed)
            if changed:
                report.changed.append(name)
    return report
