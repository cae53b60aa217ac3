"""The host's vGPU manager version, read from the vGPU's PCI config space, and what it allows.

The layout is NVIDIA's, as its own `vgpu-util` reads it (NVIDIA/gpu-driver-container,
`vgpu/src/vgpu-util.go`): with the capability-list bit (0x10) of the status register (0x06)
set, walk the list from the pointer at 0x34 (id at +0, next at +1, length at +2) to the
vendor-specific capability (id 0x09). A vGPU's carries the signature "VF" at bytes 3-4 and
records from byte 5 on (type, then length including these two bytes); record type 0 holds the
host driver version (10 bytes) and branch (10 bytes), ASCII, NUL-padded. The whole config
space (256 bytes) is readable only with privilege: unprivileged reads stop at 64.

Azure supports a guest driver at most one major branch behind the host's vGPU manager
(Microsoft Learn: "The latest NVIDIA major driver branch(n) is only backward compatible with
the previous major branch(n-1)"); a guest newer than the host is not supported by NVIDIA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import structlog

from agent.catalog import CATALOG, vgpu_release
from agent.host.root import HostRoot

log = structlog.get_logger(__name__)

CONFIG_SIZE = 256
STATUS, STATUS_CAP_LIST, CAP_POINTER = 0x06, 0x10, 0x34
CAP_VENDOR_SPECIFIC, CAP_BROKEN = 0x09, 0xFF
SIGNATURE = b"VF"  # at bytes 3-4 of the vendor-specific capability
RECORDS_START, RECORD_HOST_DRIVER = 5, 0
VERSION_LEN = BRANCH_LEN = 10
PCI_DEVICES = PurePosixPath("/sys/bus/pci/devices")
NVIDIA_VENDOR = "0x10de"

OK, BEHIND, REFUSE, UNKNOWN = "ok", "behind", "refuse", "unknown"


class ConfigSpaceError(ValueError):
    """The config space cannot tell (short read, no host record); the message says why."""


@dataclass(frozen=True)
class HostVgpu:
    """The vGPU manager on the hypervisor host, as its capability record states it."""

    version: str  # e.g. "595.58"; upper-cased and trimmed as vgpu-util does
    branch: str  # the branch string as recorded (format not documented)
    slot: str = ""  # the PCI function it was read from

    @property
    def vgpu_release(self) -> int | None:
        return vgpu_release(self.version)

    def as_dict(self) -> dict[str, object]:
        return {"version": self.version, "branch": self.branch, "slot": self.slot,
                "vgpu_release": self.vgpu_release}


def vendor_capability(config: bytes) -> bytes | None:
    """The vendor-specific capability's bytes, or None when the device has none."""
    if len(config) < CONFIG_SIZE:
        raise ConfigSpaceError(f"only {len(config)} of {CONFIG_SIZE} config-space bytes "
                               "readable (needs privilege)")
    if not config[STATUS] & STATUS_CAP_LIST:
        return None
    visited: set[int] = set()
    pos = config[CAP_POINTER]
    while pos and pos + 2 < len(config) and pos not in visited:  # a loop ends the walk
        cap_id, following, length = config[pos], config[pos + 1], config[pos + 2]
        if cap_id == CAP_BROKEN:
            return None
        if cap_id == CAP_VENDOR_SPECIFIC:
            return config[pos:pos + length]
        visited.add(pos)
        pos = following
    return None


def is_vgpu(capability: bytes | None) -> bool:
    return capability is not None and len(capability) >= 5 and capability[3:5] == SIGNATURE


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip("\x00").strip().upper()


def host_driver(capability: bytes) -> HostVgpu:
    """The host driver record (type 0) among the capability's records."""
    pos = RECORDS_START
    while pos < len(capability) and capability[pos] != RECORD_HOST_DRIVER:
        step = capability[pos + 1] if pos + 1 < len(capability) else 0
        if step == 0:  # a zero length would never advance (vgpu-util would spin)
            break
        pos += step
    end = pos + 2 + VERSION_LEN + BRANCH_LEN
    if pos >= len(capability) or capability[pos] != RECORD_HOST_DRIVER or end > len(capability):
        raise ConfigSpaceError("no host driver version record in the vGPU capability")
    version = _text(capability[pos + 2:pos + 2 + VERSION_LEN])
    branch = _text(capability[pos + 2 + VERSION_LEN:end])
    return HostVgpu(version, branch)


def parse_config(config: bytes, slot: str = "") -> HostVgpu | None:
    """The host's vGPU manager from one function's config space; None when not a vGPU."""
    capability = vendor_capability(config)
    if capability is None or not is_vgpu(capability):
        return None
    found = host_driver(capability)
    return HostVgpu(found.version, found.branch, slot)


def read_host_vgpu(root: HostRoot) -> tuple[HostVgpu | None, str]:
    """(the first NVIDIA vGPU's host record, why not) from sysfs, as vgpu-util scans it."""
    try:
        entries = sorted(root.path(PCI_DEVICES).iterdir())
    except OSError as exc:
        return None, f"cannot list {PCI_DEVICES}: {exc.strerror or exc}"
    reasons = []
    for entry in entries:
        host_dir = PCI_DEVICES / entry.name
        if (root.read_text(host_dir / "vendor") or "").strip().lower() != NVIDIA_VENDOR:
            continue
        try:
            found = parse_config(root.path(host_dir / "config").read_bytes(), entry.name)
        except (OSError, ConfigSpaceError) as exc:
            reasons.append(f"{entry.name}: {getattr(exc, 'strerror', None) or exc}")
            continue
        if found is not None:
            return found, ""
        reasons.append(f"{entry.name}: no vGPU capability in its config space")
    return None, "; ".join(reasons) or "no NVIDIA PCI function in sysfs"


def judge_guest(guest_version: str, host: HostVgpu | None) -> tuple[str, str]:
    """(ok | behind | refuse | unknown, reason) for running this guest driver on that host."""
    if host is None:
        return UNKNOWN, "host vGPU manager version unknown"
    guest_rel, host_rel = vgpu_release(guest_version), host.vgpu_release
    if guest_rel is None or host_rel is None:
        return UNKNOWN, (f"no vGPU release known for guest {guest_version} or host "
                         f"{host.version}: compatibility not judged")
    where = f"guest driver {guest_version} (vGPU {guest_rel}), host vGPU manager " \
            f"{host.version} (vGPU {host_rel})"
    if guest_rel == host_rel:
        return OK, f"{where}: same branch"
    if guest_rel == host_rel - 1:
        return BEHIND, f"{where}: one branch behind, supported until the host moves again"
    if guest_rel > host_rel:
        return REFUSE, f"{where}: the guest is newer than the host, which cannot run it"
    return REFUSE, f"{where}: more than one branch behind the host"


def remedy_for(host: HostVgpu) -> str:
    """Which pin the host can run, from the catalog."""
    same = sorted(v for v, r in CATALOG.items() if r.vgpu_branch == host.vgpu_release)
    if same:
        return f"set GRID_AGENT_DRIVER_VERSION={same[-1]} (vGPU {host.vgpu_release}, the host's)"
    return (f"pin a GRID driver of the host's branch (vGPU {host.vgpu_release}) with "
            "GRID_AGENT_DRIVER_VERSION, GRID_AGENT_DRIVER_URL and GRID_AGENT_DRIVER_SHA256")


@dataclass(frozen=True)
class HostVgpuFacts:
    """What `detect` shows: the host's vGPU manager (or why unknown) against the pin."""

    host: HostVgpu | None
    unknown: str
    pin: str
    level: str
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"host_vgpu": self.host.as_dict() if self.host else None,
                "host_vgpu_unknown": self.unknown or None,
                "pin": {"version": self.pin, "vs_host": self.level, "reason": self.reason}}

    def line(self) -> str:
        if self.host is None:
            return f"host vGPU manager unknown: {self.unknown}"
        return (f"host vGPU manager {self.host.version} (branch {self.host.branch or '-'}, "
                f"vGPU {self.host.vgpu_release or '?'}) on {self.host.slot}; pin: {self.reason}")


def host_vgpu_facts(root: HostRoot, pin: str) -> HostVgpuFacts:
    host, why = read_host_vgpu(root)
    level, reason = judge_guest(pin, host)
    return HostVgpuFacts(host, why, pin, level, reason)
