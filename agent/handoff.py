"""The GPU Operator hand-off: host `/` rbind-mounted at /run/nvidia/driver, and the marker."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

import structlog

from agent.errors import InstallError
from agent.host.files import write_if_changed
from agent.host.mounts import (
    Mount,
    covering_mount,
    parse_mountinfo,
    read_mountinfo,
    top_mount_at,
)
from agent.host.paths import DRIVER_ROOT, MARKER
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

log = structlog.get_logger(__name__)

# From v26.3 the validator parses the marker as YAML map[string]bool; these keys are
# safe for every operator version (docs/design/gpu-operator-contract.md 1.4).
MARKER_CONTENT = "GDRCOPY_ENABLED: false\nGDS_ENABLED: false\nGPU_DIRECT_RDMA_ENABLED: false\n"
_BOOL_LINE = re.compile(r"^[A-Za-z0-9_]+:\s*(true|false)\s*$")

__all__ = ["DRIVER_ROOT", "MARKER", "MARKER_CONTENT", "Handoff", "inspect_handoff", "publish",
           "remove_marker", "run_is_shared", "unpublish"]


def run_is_shared(mountinfo: str) -> bool:
    """Host /run must propagate mounts, or operator pods never see /run/nvidia/driver."""
    mount = covering_mount(parse_mountinfo(mountinfo), "/run")
    return bool(mount and mount.shared)


def marker_is_valid(text: str) -> bool:
    """Empty, or only `KEY: true|false` lines: what every validator version accepts."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return all(_BOOL_LINE.match(ln.strip()) for ln in lines)


def driver_root_is_host_root(mountinfo: str) -> bool:
    """DRIVER_ROOT is a mount point showing the same filesystem and path as host `/`."""
    mounts = parse_mountinfo(mountinfo)
    here, slash = top_mount_at(mounts, DRIVER_ROOT), top_mount_at(mounts, "/")
    return bool(here and slash and is_host_root_bind(here, slash))


@dataclass(frozen=True)
class Handoff:
    marker_present: bool
    marker_valid: bool
    mounted: bool
    reason: str

    @property
    def intact(self) -> bool:
        return self.marker_present and self.marker_valid and self.mounted


def inspect_handoff(root: HostRoot) -> Handoff:
    """What the GPU Operator would find on this host right now (file reads only)."""
    text = root.read_text(MARKER)
    present = text is not None
    valid = present and marker_is_valid(text or "")
    mounted = driver_root_is_host_root(read_mountinfo(root))
    problems = []
    if not present:
        problems.append(f"marker {MARKER} missing")
    elif not valid:
        problems.append(f"marker {MARKER} is not a YAML map of booleans")
    if not mounted:
        problems.append(f"{DRIVER_ROOT} is not a mount of host /")
    return Handoff(present, valid, mounted, "; ".join(problems) or "hand-off intact")


def is_host_root_bind(mount: Mount, slash: Mount) -> bool:
    """A bind of host `/`: the same filesystem and the same path inside it."""
    return mount.dev == slash.dev and mount.fs_root == slash.fs_root


def _driver_root_dir(root: HostRoot) -> bool:
    """DRIVER_ROOT a real directory inside a real /run/nvidia; True when a link was replaced.

    mount(8) follows links in its target: a link at DRIVER_ROOT (to a directory, or to `/`)
    had host `/` stacked on the link's target on every publish (issue 12). A link there is
    removed, never followed, and replaced by a directory; a link at /run/nvidia is refused.
    """
    parent = str(PurePosixPath(DRIVER_ROOT).parent)
    target = root.link_target(parent)
    if target is not None:
        raise InstallError(f"refusing to hand off: {parent} is a symbolic link (to {target})",
                           remedy=f"remove the link on the node (`rm {parent}`); the agent "
                                  "creates the directory")
    name = PurePosixPath(DRIVER_ROOT).name
    with root.dir_fd(parent, create=True) as dfd:
        replaced = False
        with contextlib.suppress(OSError):  # absent, or not a link (EINVAL)
            link = os.readlink(name, dir_fd=dfd)
            os.unlink(name, dir_fd=dfd)
            log.warning("driver_root_link_replaced", path=DRIVER_ROOT, target=link)
            replaced = True
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dfd)
        if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise InstallError(f"refusing to hand off: {DRIVER_ROOT} is not a directory",
                               remedy=f"remove it on the node (`rm {DRIVER_ROOT}`) and retry")
    return replaced


def _foreign(mount: Mount) -> InstallError:
    return InstallError(
        f"refusing to hand off: a foreign {mount.fstype} mount (root {mount.fs_root}, device "
        f"{mount.dev}) is at {DRIVER_ROOT}, not host /; the agent neither stacks on it nor "
        "writes the marker over it",
        remedy=f"unmount it on the node (`umount -R {DRIVER_ROOT}`); if the GPU Operator's own "
               "driver container runs here, disable it (driver.enabled=false)")


def _ensure_mount(root: HostRoot, runner: HostRunner) -> bool:
    """Exactly one rbind of host `/` at DRIVER_ROOT, judged by the host's mountinfo."""
    # Never delete and re-create a real DRIVER_ROOT: operator pods may hold it open
    # (a reboot once left `.../driver//deleted` in mountinfo and validators looped).
    replaced = _driver_root_dir(root)
    mounts = parse_mountinfo(read_mountinfo(root))
    slash = top_mount_at(mounts, "/")
    here = [m for m in mounts if m.mount_point == DRIVER_ROOT]
    if slash is None:
        raise InstallError("the host's mount table has no `/` (cannot read /proc/1/mountinfo)",
                           remedy="run the agent with hostPID and the host's / mounted")
    foreign = [m for m in here if not is_host_root_bind(m, slash)]
    if foreign:
        remove_marker(root)  # the operator must not trust a tree that is not host /
        raise _foreign(foreign[-1])
    for _stale in here[1:]:  # stacked by an older agent: take ours off down to one
        runner.run(["umount", "--lazy", DRIVER_ROOT])
    if here:
        return replaced or len(here) > 1
    # Recursive, so /run/nvidia/driver/dev holds the device nodes the validator uses.
    runner.run(["mount", "--rbind", "/", DRIVER_ROOT])
    return True


def _ensure_marker(root: HostRoot) -> bool:
    return write_if_changed(root, MARKER, MARKER_CONTENT)


def publish(root: HostRoot, runner: HostRunner) -> bool:
    """Mount first, marker last: the marker says everything else is in place."""
    mounted = _ensure_mount(root, runner)
    marked = _ensure_marker(root)
    changed = mounted or marked
    log.info("handoff_published", changed=changed, mounted=mounted, marker_written=marked)
    return changed


def remove_marker(root: HostRoot) -> bool:
    """Withdraw the marker so no new operator pod trusts a driver that is gone."""
    try:
        if not root.unlink(MARKER):
            return False
    except FileNotFoundError:  # no validations directory at all
        return False
    log.info("handoff_marker_removed", path=MARKER)
    return True


def unpublish(root: HostRoot, runner: HostRunner) -> bool:
    """Marker first, then a lazy unmount (pods holding the tree keep working)."""
    changed = remove_marker(root)
    mounts = parse_mountinfo(read_mountinfo(root))
    slash = top_mount_at(mounts, "/")
    for mount in reversed([m for m in mounts if m.mount_point == DRIVER_ROOT]):
        if slash is None or not is_host_root_bind(mount, slash):
            log.warning("driver_root_foreign_mount_kept", fstype=mount.fstype, dev=mount.dev)
            break  # never unmount what is not ours (nor what lies under it)
        runner.run(["umount", "--lazy", DRIVER_ROOT])
        changed = True
    log.info("handoff_unpublished", changed=changed)
    return changed
