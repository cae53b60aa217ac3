"""PCI config-space bytes laid out as NVIDIA's vgpu-util reads them (agent/vgpu.py's doc).

Built from the layout, not copied from a device: a type-0 header, a capability list
(power management, MSI, then the vendor-specific one) and, for a vGPU, the "VF" signature
with records whose type-0 record holds the host driver version and branch.
"""

from __future__ import annotations

import struct

HOST_VERSION, HOST_BRANCH = "595.58.02", "R595"


def record(kind: int, payload: bytes) -> bytes:
    """One vGPU capability record: type, length (counting these two bytes), payload."""
    return bytes([kind, 2 + len(payload)]) + payload


def host_record(version: str = HOST_VERSION, branch: str = HOST_BRANCH) -> bytes:
    return record(0, version.encode().ljust(10, b"\0")[:10] + branch.encode().ljust(10, b"\0")[:10])


def config_space(*, vgpu: bool = True, records: bytes | None = None, signature: bytes = b"VF",
                 cap_list: bool = True, loop: bool = False, device: int = 0x2BB5,
                 size: int = 256) -> bytes:
    """256 bytes of config space of an RTX PRO 6000 BSE function (1414:2187, class 0x030200)."""
    cfg = bytearray(256)
    struct.pack_into("<HHHH", cfg, 0, 0x10DE, device, 0x0007, 0x0010 if cap_list else 0)
    cfg[0x09:0x0C] = bytes([0x00, 0x02, 0x03])  # prog-if, subclass 3D, class display
    struct.pack_into("<HH", cfg, 0x2C, 0x1414, 0x2187)
    cfg[0x34] = 0x40
    cfg[0x40:0x48] = bytes([0x01, 0x50, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00])  # power management
    cfg[0x50:0x5A] = bytes([0x05, 0x68 if vgpu else 0x00, 0x80, 0x00] + [0] * 6)  # MSI
    if vgpu:
        body = records if records is not None else record(1, b"\x01\x00") + host_record()
        cap = bytes([0x09, 0x50 if loop else 0x00, 5 + len(body)]) + signature + body
        cfg[0x68:0x68 + len(cap)] = cap
    return bytes(cfg[:size])
