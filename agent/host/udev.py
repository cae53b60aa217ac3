"""The pyudev adapter: the only module that reads hardware through libudev."""

from __future__ import annotations

import pyudev

from agent.pci import PciDevice


def _hex(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None


def _pair(prop: str | None) -> tuple[int | None, int | None]:
    # udev's PCI_ID / PCI_SUBSYS_ID are "10DE:2BB5".
    if not prop or ":" not in prop:
        return None, None
    left, right = prop.split(":", 1)
    return _hex(left), _hex(right)


def _attr(dev: pyudev.Device, name: str) -> str | None:
    try:
        value: str = dev.attributes.asstring(name)
        return value
    except (KeyError, UnicodeDecodeError, OSError):
        return None


def to_pci_device(dev: pyudev.Device) -> PciDevice | None:
    """Build a record from udev properties, falling back to sysfs attributes."""
    props = dev.properties
    # Read DRIVER before touching dev.driver: libudev's driver lookup re-reads the
    # sysfs link and drops the property when the link is absent (seen under umockdev).
    driver = props.get("DRIVER") or dev.driver
    vendor, device = _pair(props.get("PCI_ID"))
    sub_vendor, sub_device = _pair(props.get("PCI_SUBSYS_ID"))
    vendor = vendor if vendor is not None else _hex(_attr(dev, "vendor"))
    device = device if device is not None else _hex(_attr(dev, "device"))
    if vendor is None or device is None:
        return None
    if sub_vendor is None:
        sub_vendor = _hex(_attr(dev, "subsystem_vendor"))
        sub_device = _hex(_attr(dev, "subsystem_device"))
    klass = _hex(props.get("PCI_CLASS")) or _hex(_attr(dev, "class")) or 0
    return PciDevice(
        slot=props.get("PCI_SLOT_NAME") or dev.sys_name,
        vendor=vendor,
        device=device,
        subsystem_vendor=sub_vendor,
        subsystem_device=sub_device,
        pci_class=klass,
        driver=driver,
    )


def scan_pci(context: pyudev.Context | None = None) -> list[PciDevice]:
    """Every PCI function udev knows, as frozen records."""
    context = context or pyudev.Context()
    found = (to_pci_device(d) for d in context.list_devices(subsystem="pci"))
    return [d for d in found if d is not None]
