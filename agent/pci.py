"""PCI function records and target matching (pure: no pyudev here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

NVIDIA_VENDOR = 0x10DE
# 0x0302 3D controller (what the Azure vGPU exposes), 0x0300 VGA: accept both.
TARGET_CLASSES = (0x0302, 0x0300)

_ID_RE = re.compile(r"^\s*([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\s*$")


@dataclass(frozen=True, order=True)
class PciId:
    """A vendor:device (or subsystem vendor:device) pair."""

    vendor: int
    device: int

    @classmethod
    def parse(cls, text: str) -> PciId:
        match = _ID_RE.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a PCI id of the form 10de:2bb5")
        return cls(int(match.group(1), 16), int(match.group(2), 16))

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


def parse_id_list(text: str) -> tuple[PciId, ...]:
    """Parse `10de:2bb5,10de:2bb1` (commas or spaces); an empty text is an empty tuple."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    return tuple(PciId.parse(p) for p in parts)


@dataclass(frozen=True)
class PciDevice:
    """One PCI function as udev/sysfs describes it."""

    slot: str
    vendor: int
    device: int
    subsystem_vendor: int | None
    subsystem_device: int | None
    pci_class: int
    driver: str | None

    @property
    def pci_id(self) -> PciId:
        return PciId(self.vendor, self.device)

    @property
    def subsystem_id(self) -> PciId | None:
        if self.subsystem_vendor is None or self.subsystem_device is None:
            return None
        return PciId(self.subsystem_vendor, self.subsystem_device)

    @property
    def base_class(self) -> int:
        """Class and subclass (0x0302), without the programming interface byte."""
        return self.pci_class >> 8

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            pci_id=str(self.pci_id),
            subsystem_id=str(self.subsystem_id) if self.subsystem_id else None,
            pci_class=f"0x{self.pci_class:06x}",
        )
        for key in ("vendor", "device", "subsystem_vendor", "subsystem_device"):
            data.pop(key)
        return data


@dataclass(frozen=True)
class TargetSpec:
    """Which PCI functions this agent installs for."""

    ids: tuple[PciId, ...]
    subsystems: tuple[PciId, ...] = ()  # empty: any subsystem
    classes: tuple[int, ...] = TARGET_CLASSES

    def matches(self, dev: PciDevice) -> bool:
        if dev.pci_id not in self.ids or dev.base_class not in self.classes:
            return False
        return not self.subsystems or dev.subsystem_id in self.subsystems


@dataclass(frozen=True)
class Detection:
    """What `detect` found: every NVIDIA function, and which are targets."""

    nvidia: tuple[PciDevice, ...]
    targets: tuple[PciDevice, ...]

    @property
    def is_target_node(self) -> bool:
        return bool(self.targets)


def detect(devices: Sequence[PciDevice], spec: TargetSpec) -> Detection:
    """Split the bus into NVIDIA functions and target functions, in slot order."""
    nvidia = tuple(sorted((d for d in devices if d.vendor == NVIDIA_VENDOR), key=lambda d: d.slot))
    return Detection(nvidia=nvidia, targets=tuple(d for d in nvidia if spec.matches(d)))
