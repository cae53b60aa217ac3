"""Another NVIDIA driver installation on the host, found by files only (no process).

AKS node images can carry a prebaked CUDA driver, and Ubuntu hosts may have NVIDIA's
driver from apt (`nvidia-driver-535`, CUDA's `cuda-drivers`, `libnvidia-*`, a DKMS
`nvidia` tree under /var/lib/dkms and /usr/src/nvidia-<version>, its own nvidia-smi).
Mixed with the GRID driver it gives "Driver/library version mismatch", and its DKMS
tree rebuilds its own nvidia.ko (under updates/dkms, which modprobe prefers) on every
kernel update. The install removes it (agent/install/foreign.py); `check` and `watch`
warn about it, since the fast path never removes anything.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.driver.record import InstallRecord
from agent.host.root import HostRoot

DPKG_STATUS = "/var/lib/dpkg/status"
DKMS_TREE = "/var/lib/dkms/nvidia"
# AKS's prebake marker (AgentBaker GPU_DKMS_MARKER_FILE).
AKS_PREBAKE_MARKER = "/opt/azure/aks-gpu/dkms-marker"
# Driver packages (Ubuntu's and NVIDIA's CUDA repository's names). The container toolkit
# (libnvidia-container*, nvidia-container-*) is not a driver and is what the GPU Operator
# and AKS install next to any driver: never purged.
_DRIVER_PACKAGE = re.compile(
    r"^(nvidia-driver-\d.*|nvidia-headless-\d.*|nvidia-dkms-\d.*|nvidia-kernel-.*|"
    r"nvidia-utils-\d.*|nvidia-compute-utils-\d.*|nvidia-fabricmanager-\d.*|"
    r"linux-modules-nvidia-.*|linux-objects-nvidia-.*|linux-signatures-nvidia-.*|"
    r"cuda-drivers(-\d.*)?|libnvidia-(?!container).*|xserver-xorg-video-nvidia-\d.*|"
    r"nvidia-firmware-\d.*)$")
_MODINFO_VERSION = re.compile(rb"(?:^|\x00)version=([^\x00]+)")
_TREE_VERSION = re.compile(r"^nvidia-(\d+(?:\.\d+)+)$")


@dataclass(frozen=True)
class ForeignDriver:
    """What of another NVIDIA driver installation the host holds (empty: none)."""

    packages: tuple[str, ...] = ()
    dkms_versions: tuple[str, ...] = ()
    source_trees: tuple[str, ...] = ()  # /usr/src/nvidia-<version> of other versions
    dkms_modules: tuple[str, ...] = ()  # built .ko files of other versions under updates/
    aks_prebake: bool = False

    def __bool__(self) -> bool:
        return bool(self.packages or self.dkms_versions or self.source_trees
                    or self.dkms_modules or self.aks_prebake)

    def describe(self) -> str:
        parts = []
        if self.packages:
            parts.append("packages " + ", ".join(self.packages))
        if self.dkms_versions:
            parts.append("DKMS " + ", ".join(f"nvidia/{v}" for v in self.dkms_versions))
        elif self.source_trees:
            parts.append("sources " + ", ".join(self.source_trees))
        if self.dkms_modules and not self.dkms_versions:
            parts.append("modules " + ", ".join(self.dkms_modules))
        if self.aks_prebake:
            parts.append("an AKS prebaked driver")
        return "; ".join(parts)


def installed_packages(status_text: str) -> list[str]:
    """Packages dpkg has installed, from /var/lib/dpkg/status (deb822 stanzas)."""
    found = []
    for stanza in status_text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t")):
                fields[key.strip()] = value.strip()
        status = fields.get("Status", "").split()
        if fields.get("Package") and status[-1:] in (["installed"], ["half-configured"],
                                                     ["unpacked"], ["half-installed"]):
            found.append(fields["Package"])
    return found


def driver_packages(status_text: str) -> list[str]:
    return sorted(p for p in installed_packages(status_text) if _DRIVER_PACKAGE.match(p))


def ko_version(data: bytes) -> str | None:
    """The `version=` of a kernel module's .modinfo section."""
    found = _MODINFO_VERSION.search(data)
    return found.group(1).decode(errors="replace") if found else None


_CHUNK, _OVERLAP = 1 << 20, 4096


def ko_file_version(path: Path) -> str | None:
    """ko_version of a module file, read a chunk at a time: `watch` looks every cycle and a
    built nvidia.ko is tens of MB."""
    carry = b""
    with path.open("rb") as file:
        while True:
            chunk = file.read(_CHUNK)
            window = carry + chunk
            found = _MODINFO_VERSION.search(window)
            # A match that reaches the window's end may be cut: take it from the next window.
            if found and (found.end() < len(window) or not chunk):
                return found.group(1).decode(errors="replace")
            if not chunk:
                return None
            carry = window[-_OVERLAP:]


@functools.lru_cache(maxsize=64)
def _cached_version(path: str, _mtime_ns: int, _size: int, _ino: int) -> str | None:
    return ko_file_version(Path(path))


def _module_version(root: HostRoot, ko: Path, release: str) -> str | None:
    """A module's version; a compressed one's (`.ko.zst`, as Ubuntu 24.04's DKMS leaves
    them) is that of the one DKMS tree built for `release`, since its .modinfo is not
    readable without decompressing tens of MB every watch cycle."""
    if ko.suffix != ".ko":
        built = [v for v in dkms_versions(root)
                 if root.path(f"{DKMS_TREE}/{v}/{release}").is_dir()]
        return built[0] if len(built) == 1 else None
    st = ko.stat()  # a file read once per change, not once per watch cycle
    return _cached_version(str(ko), st.st_mtime_ns, st.st_size, st.st_ino)


def _dirs(root: HostRoot, host_dir: str) -> list[str]:
    try:
        return sorted(p.name for p in root.path(host_dir).iterdir() if p.is_dir())
    except OSError:
        return []


def dkms_versions(root: HostRoot) -> list[str]:
    """The versions of DKMS's `nvidia` module, as `dkms status` lists them: not its
    active links (kernel-<release>-<arch> -> <version>/<release>/<arch>) nor the
    original_module it keeps for uninstall (list_module_version_combos in dkms)."""
    try:
        entries = sorted(root.path(DKMS_TREE).iterdir())
    except OSError:
        return []
    return [p.name for p in entries if p.is_dir() and not p.is_symlink()
            and p.name != "original_module"]


def find_foreign(root: HostRoot, pin_version: str,
                 ours: frozenset[str] = frozenset()) -> ForeignDriver:
    """Another NVIDIA driver's packages, DKMS trees and modules (files only, no process).

    `ours`: other versions this agent installed itself (the install record's): their DKMS
    trees belong to a .run install, which nvidia-installer replaces by itself."""
    ours = ours | {pin_version}
    packages = driver_packages(root.read_text(DPKG_STATUS, "") or "")
    dkms = [v for v in dkms_versions(root) if v not in ours]
    trees = [f"/usr/src/{name}" for name in _dirs(root, "/usr/src")
             if (m := _TREE_VERSION.match(name)) and m.group(1) not in ours]
    modules = []
    for release in _dirs(root, "/lib/modules"):
        updates = root.path(f"/lib/modules/{release}/updates")
        for ko in sorted(updates.rglob("nvidia*.ko*")) if updates.is_dir() else ():
            try:
                version = _module_version(root, ko, release)
            except OSError:
                continue
            if version not in ours:
                modules.append(str(PurePosixPath("/") / ko.relative_to(root.path("/"))))
    return ForeignDriver(tuple(packages), tuple(dkms), tuple(trees), tuple(modules),
                         root.exists(AKS_PREBAKE_MARKER))


def ours_of(record: InstallRecord | None) -> frozenset[str]:
    """The version this agent's install record names: its .run's DKMS tree is not foreign."""
    return frozenset({record.module_version}) if record and record.module_version \
        else frozenset()
