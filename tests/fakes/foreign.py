"""A host with another NVIDIA driver (a CUDA driver from apt, DKMS-built) as files on disk."""

from __future__ import annotations

from agent.driver.foreign import DPKG_STATUS
from agent.host.root import HostRoot

PIN = "580.105.08"
OTHER = "535.183.01"
KERNEL = "6.8.0-1030-azure"


def stanza(package: str, status: str = "install ok installed",
           version: str = "535.183.01-0ubuntu0.22.04.1") -> str:
    return (f"Package: {package}\nStatus: {status}\nPriority: optional\nSection: non-free/libs\n"
            f"Architecture: amd64\nVersion: {version}\nDescription: {package}\n"
            " a continuation line: Package: not-a-package\n")


# A CUDA driver from apt next to the container toolkit the GPU Operator needs.
STATUS = "\n".join([
    stanza("bash", version="5.1-6ubuntu1"),
    stanza("nvidia-driver-535"), stanza("nvidia-dkms-535"), stanza("libnvidia-compute-535"),
    stanza("nvidia-utils-535"), stanza("nvidia-kernel-common-535"), stanza("cuda-drivers-535"),
    stanza("libnvidia-container1", version="1.17.8-1"),
    stanza("nvidia-container-toolkit", version="1.17.8-1"),
    stanza("nvidia-driver-470", status="deinstall ok config-files"),
])
FOREIGN = ["cuda-drivers-535", "libnvidia-compute-535", "nvidia-dkms-535", "nvidia-driver-535",
           "nvidia-kernel-common-535", "nvidia-utils-535"]


def write(root: HostRoot, host_path: str, data: str | bytes, mode: int = 0o644) -> None:
    path = root.path(host_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    path.chmod(mode)


def ko(version: str) -> bytes:
    return b"\x7fELF...\x00license=NVIDIA\x00version=" + version.encode() + b"\x00srcversion=X\x00"


def cuda_driver(root: HostRoot, kernel: str = KERNEL) -> HostRoot:
    """The CUDA driver's packages, DKMS tree and module; and ours, from a GRID --dkms install."""
    write(root, DPKG_STATUS, STATUS)
    write(root, f"/var/lib/dkms/nvidia/{OTHER}/source", "")
    write(root, f"/usr/src/nvidia-{OTHER}/dkms.conf", 'PACKAGE_NAME="nvidia"\n')
    write(root, f"/lib/modules/{kernel}/updates/dkms/nvidia.ko", ko(OTHER))
    write(root, f"/var/lib/dkms/nvidia/{PIN}/source", "")
    write(root, f"/usr/src/nvidia-{PIN}/dkms.conf", 'PACKAGE_NAME="nvidia"\n')
    write(root, f"/lib/modules/{kernel}/updates/dkms/nvidia-uvm.ko", ko(PIN))
    return root
