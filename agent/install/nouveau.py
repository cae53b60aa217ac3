"""nouveau: blacklisted for good (modprobe.d + initramfs) and unloaded when unused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.driver.state import Module, read_module
from agent.errors import HostCommandError, InstallError
from agent.host.files import write_if_changed
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install.modules import failure_lines

log = structlog.get_logger(__name__)

BLACKLIST = "/etc/modprobe.d/blacklist-nouveau.conf"
BLACKLIST_TEXT = "blacklist nouveau\noptions nouveau modeset=0\n"
INITRAMFS_ARGV = ("update-initramfs", "-u")


@dataclass(frozen=True)
class NouveauOutcome:
    changed: bool
    reboot_required: bool
    reason: str


def ensure_blacklist(root: HostRoot) -> bool:
    """Write the blacklist file atomically, only when its content differs."""
    return write_if_changed(root, BLACKLIST, BLACKLIST_TEXT)


def initramfs_stale(root: HostRoot) -> bool:
    """The newest initramfs predates the blacklist (a crash between the two steps)."""
    images = sorted(root.path("/boot").glob("initrd.img-*"), key=_mtime)
    if not images:
        return False  # nothing to compare with; the write itself triggers the rebuild
    return _mtime(images[-1]) < _mtime(root.path(BLACKLIST))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def rebuild_initramfs(runner: HostRunner) -> None:
    # The initramfs carries its own copy of modprobe.d; without a rebuild nouveau
    # still loads at boot, before the root filesystem's blacklist is read.
    try:
        runner.run(list(INITRAMFS_ARGV), timeout=600)
    except HostCommandError as exc:
        raise InstallError(f"update-initramfs -u failed: {failure_lines(exc)}",
                           remedy="run `update-initramfs -u` on the node and read its errors"
                           ) from exc


def unload_nouveau(root: HostRoot, runner: HostRunner, nouveau: Module) -> NouveauOutcome:
    """rmmod nouveau at refcnt 0 (never -f); otherwise say a reboot is required and why."""
    if nouveau.builtin:
        return NouveauOutcome(False, True, "nouveau is built into this kernel: boot with "
                              "`modprobe.blacklist=nouveau nouveau.modeset=0`")
    count = nouveau.refcnt
    if count:
        holders = nouveau.holders
        users = f"refcnt {count}" + (f", held by {', '.join(holders)}" if holders else "")
        return NouveauOutcome(False, True, f"nouveau is loaded and in use ({users})")
    try:
        runner.run(["rmmod", "nouveau"], timeout=60)
    except HostCommandError as exc:
        return NouveauOutcome(False, True,
                              f"nouveau could not be unloaded: {failure_lines(exc)}")
    return NouveauOutcome(True, False, "nouveau unloaded")


def ensure_nouveau_disabled(root: HostRoot, runner: HostRunner) -> NouveauOutcome:
    """Blacklist, rebuild the initramfs when the blacklist is new, unload if loaded."""
    wrote = ensure_blacklist(root)
    rebuilt = wrote or initramfs_stale(root)
    if rebuilt:
        rebuild_initramfs(runner)
    changed = wrote or rebuilt
    nouveau = read_module(root, "nouveau")
    if not nouveau.loaded:
        log.info("nouveau_disabled", blacklist_written=wrote, initramfs_rebuilt=rebuilt,
                 loaded=False, changed=changed)
        return NouveauOutcome(changed, False, "nouveau not loaded")
    outcome = unload_nouveau(root, runner, nouveau)
    changed = changed or outcome.changed
    log.info("nouveau_disabled", blacklist_written=wrote, initramfs_rebuilt=rebuilt,
             unloaded=outcome.changed, reboot_required=outcome.reboot_required,
             reason=outcome.reason, changed=changed)
    return NouveauOutcome(changed, outcome.reboot_required, outcome.reason)
