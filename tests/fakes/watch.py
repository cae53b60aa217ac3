"""The watch side's fake node: a host tree under tmp_path and the FakeRunner that plays it."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

from agent import handoff as pub
from agent.driver.record import InstallRecord, write_record
from agent.health.checks import HealthConfig
from agent.health.monitor import Healer, Health
from agent.host.lock import host_lock
from agent.host.root import HostRoot
from tests.fakes.clock import FakeClock
from tests.fakes.pci import SPEC, TARGET
from tests.fakes.runner import RBIND, FakeRunner, mounting_runner
from tests.fakes.smi import fixture
from tests.fakes.tree import Tree

BASE = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "25 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw\n")
NVRM = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.105.08  "
        "Wed Oct 29 23:15:00 UTC 2025\n")


class FakeHost(FakeRunner):
    """The host watch talks to, as FakeRunner rules over attributes a test may change between
    cycles: nvidia-smi (table and -q -x), systemctl is-active, mount --rbind."""

    def __init__(self, root: Path, *, smi_code: int = 0, smi_out: str | None = None,
                 xml: str | None = None, units: dict[str, str] | None = None,
                 hang: threading.Event | None = None) -> None:
        super().__init__()
        self.root, self.smi_code, self.hang = root, smi_code, hang
        self.smi_out = fixture("smi-table.txt") if smi_out is None else smi_out
        self.xml = fixture("healthy-v13.xml") if xml is None else xml
        self.units = {"nvidia-gridd": "active", "nvidia-persistenced": "active"} \
            if units is None else units
        self.on("nvidia-smi", "-q", "-x", reply=lambda argv: self._smi(0, self.xml))
        self.on("nvidia-smi", reply=lambda argv: self._smi(self.smi_code, self.smi_out))
        self.on("systemctl", "is-active", reply=self._unit)
        mounting_runner(root / "proc/1/mountinfo", self)

    def _smi(self, code: int, out: str) -> tuple[int, str]:
        if self.hang is not None:  # set: nvidia-smi blocks until the test releases it
            self.hang.wait()
        return code, out

    def _unit(self, argv: list[str]) -> tuple[int, str]:
        state = self.units.get(argv[2], "inactive")
        return (0 if state == "active" else 3), state + "\n"


def put(root: Path, host_path: str, text: str = "") -> Path:
    return Tree(root).write(host_path, text)


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
