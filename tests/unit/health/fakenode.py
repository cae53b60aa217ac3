"""A fake node for health unit tests: host files under tmp_path and a runner that plays the host."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agent import handoff as pub
from agent.driver.record import InstallRecord, write_record
from agent.health.checks import HealthConfig
from agent.health.monitor import Healer, Health
from agent.host.lock import host_lock
from agent.host.root import HostRoot
from agent.host.runner import CommandResult
from agent.pci import PciDevice, PciId, TargetSpec
from tests.fakes.clock import FakeClock
from tests.unit.driver.smifake import fixture

TARGET = PciDevice("0000:00:02.0", 0x10DE, 0x2BB5, 0x1414, 0x2187, 0x030200, "nvidia")
H100 = PciDevice("0000:00:03.0", 0x10DE, 0x2330, 0x10DE, 0x16C1, 0x030200, None)
SPEC = TargetSpec(ids=(PciId(0x10DE, 0x2BB5),), subsystems=())
BASE = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "25 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw\n")
RBIND = "31 25 8:1 / /run/nvidia/driver rw shared:1 - ext4 /dev/sda1 rw\n"
NVRM = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.105.08  "
        "Wed Oct 29 23:15:00 UTC 2025\n")


@dataclass
class FakeHost:
    """Plays nvidia-smi, systemctl is-active and mount --rbind; records every argv."""

    root: Path
    smi_code: int = 0
    smi_out: str = field(default_factory=lambda: fixture("smi-table.txt"))
    xml: str = field(default_factory=lambda: fixture("healthy-v13.xml"))
    units: dict = field(default_factory=lambda: {"nvidia-gridd": "active",
                                                  "nvidia-persistenced": "active"})
    hang: threading.Event | None = None  # set: nvidia-smi blocks until it is cleared
    argvs: list = field(default_factory=list)

    def run(self, argv, *, timeout=None, check=True, env=None):
        argv = list(argv)
        self.argvs.append(argv)
        if argv[0] == "nvidia-smi":
            if self.hang is not None:
                self.hang.wait()
            code, out = (0, self.xml) if "-x" in argv else (self.smi_code, self.smi_out)
            return CommandResult(tuple(argv), code, out, "", 0.0)
        if argv[:2] == ["systemctl", "is-active"]:
            state = self.units.get(argv[2], "inactive")
            return CommandResult(tuple(argv), 0 if state == "active" else 3, state + "\n", "", 0.0)
        if argv[:2] == ["mount", "--rbind"]:
            info = self.root / "proc/1/mountinfo"
            info.write_text(info.read_text() + RBIND)
            return CommandResult(tuple(argv), 0, "", "", 0.0)
        raise AssertionError(f"unexpected host command {argv}")


def put(root: Path, host_path: str, text: str = "") -> Path:
    path = root / host_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def healthy_node(root: Path, *, published: bool = True) -> None:
    """A node where everything is in place: module, record, units, graphics, hand-off."""
    put(root, "/sys/module/nvidia/version", "580.105.08\n")
    put(root, "/sys/module/nvidia/refcnt", "2\n")
    put(root, "/proc/driver/nvidia/version", NVRM)
    put(root, "/lib/systemd/system/nvidia-gridd.service", "[Service]\n")
    put(root, "/usr/bin/nvidia-smi", "#!/bin/sh\n").chmod(0o755)
    put(root, "/usr/share/vulkan/icd.d/nvidia_icd.json", "{}\n")
    put(root, "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0", "")
    put(root, "/proc/1/mountinfo", BASE + (RBIND if published else ""))
    if published:
        put(root, pub.MARKER, pub.MARKER_CONTENT)
    write_record(HostRoot(root), InstallRecord(
        "580.105.08-grid-azure", "580.105.08", "6.8.0-1020-azure", "proprietary", "d" * 64,
        "installed", 0, 93.5, "2026-05-30T10:00:00+00:00"))


def reboot_without_driver(root: Path) -> None:
    """The module is gone (e.g. a kernel update without DKMS); /run was emptied by the reboot."""
    for rel in ("sys/module/nvidia/version", "sys/module/nvidia/refcnt",
                "proc/driver/nvidia/version"):
        (root / rel).unlink()


def config(**kw) -> HealthConfig:
    return HealthConfig(**{"module_version": "580.105.08", **kw})


def health(root: Path, host: FakeHost, devices=(TARGET,), *, now: datetime | None = None,
           clock=None, **cfg) -> Health:
    clock = clock or (FakeClock.at(now) if now else FakeClock())
    return Health(HostRoot(root), host, config(**cfg), SPEC, lambda: list(devices), 5.0, clock)


def healer() -> Healer:
    return Healer(publish=pub.publish, remove_marker=pub.remove_marker, lock=host_lock)
