"""The GPU Operator hand-off: host `/` rbind-mounted at /run/nvidia/driver, and the marker."""

from __future__ import annotations

import re
from dataclasses import dataclass

import structlog

from agent.host.files import write_if_changed
from agent.host.mounts import covering_mount, parse_mountinfo, read_mountinfo, top_mount_at
from agent.host.paths import DRIVER_ROOT, MARKER
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

log = structlog.get_logger(__name__)

# From v26.3 the validator parses the marker as YAML map[string]bool; these keys are
# safe for every operator version (gpu-operator-contract.md section 1.4).
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
    return bool(here and slash and here.dev == slash.dev and here.fs_root == slash.fs_root)


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


def _ensure_mount(root: HostRoot, runner: HostRunner) -> bool:
    # Never delete and re-create DRIVER_ROOT: operator pods may hold it open
    # (a reboot once left `.../driver//deleted` in mountinfo and validators looped).
    root.path(DRIVER_ROOT).mkdir(parents=True, exist_ok=True)
    mounts = parse_mountinfo(read_mountinfo(root))
    if top_mount_at(mounts, DRIVER_ROOT) is not None:
        return False  # already a mount point: leave it
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
    if top_mount_at(parse_mountinfo(read_mountinfo(root)), DRIVER_ROOT) is not None:
        runner.run(["umount", "--lazy", DRIVER_ROOT])
        changed = True
    log.info("handoff_unpublished", changed=changed)
    return changed
