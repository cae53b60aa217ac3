"""Another NVIDIA driver installation on the host: detect it, and remove it when unused.

AKS node images can carry a prebaked CUDA driver, and Ubuntu hosts may have NVIDIA's
driver from apt (`nvidia-driver-535`, CUDA's `cuda-drivers`, `libnvidia-*`, a DKMS
`nvidia` tree under /var/lib/dkms and /usr/src/nvidia-<version>, its own nvidia-smi).
Mixed with the GRID driver it gives "Driver/library version mismatch", and its DKMS
tree rebuilds its own nvidia.ko (under updates/dkms, which modprobe prefers) on every
kernel update. AKS tears such a driver down the same way (AgentBaker
`cleanUpPrebakedGPUDriver`): unload it only when idle, remove its DKMS registration and
its built modules, its libraries and binaries; we also purge its packages with apt.
A driver that is loaded and in use is never touched: exit 6, naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import structlog

from agent.errors import HostCommandError, InstallError
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

log = structlog.get_logger(__name__)

DPKG_STATUS = "/var/lib/dpkg/status"
DKMS_TREE = "/var/lib/dkms/nvidia"
# AKS's prebake marker (AgentBaker GPU_DKMS_MARKER_FILE) and the prebake's staged libraries.
AKS_PREBAKE_MARKER = "/opt/azure/aks-gpu/dkms-marker"
AKS_PREBAKE_LEFTOVERS = ("/usr/bin/lib64", "/etc/ld.so.conf.d/nvidia.conf")
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
    notes: tuple[str, ...] = field(default=(), compare=False)

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


def _dirs(root: HostRoot, host_dir: str) -> list[str]:
    try:
        return sorted(p.name for p in root.path(host_dir).iterdir() if p.is_dir())
    except OSError:
        return []


def find_foreign(root: HostRoot, pin_version: str,
                 ours: frozenset[str] = frozenset()) -> ForeignDriver:
    """Another NVIDIA driver's packages, DKMS trees and modules (files only, no process).

    `ours`: other versions this agent installed itself (the install record's): their DKMS
    trees belong to a .run install, which nvidia-installer replaces by itself."""
    ours = ours | {pin_version}
    packages = driver_packages(root.read_text(DPKG_STATUS, "") or "")
    dkms = [v for v in _dirs(root, DKMS_TREE) if v not in ours]
    trees = [f"/usr/src/{name}" for name in _dirs(root, "/usr/src")
             if (m := _TREE_VERSION.match(name)) and m.group(1) not in ours]
    modules = []
    for release in _dirs(root, "/lib/modules"):
        updates = root.path(f"/lib/modules/{release}/updates")
        for ko in sorted(updates.rglob("nvidia*.ko*")) if updates.is_dir() else ():
            try:
                version = ko_version(ko.read_bytes())
            except OSError:
                continue
            if version not in ours:
                modules.append(str(PurePosixPath("/") / ko.relative_to(root.path("/"))))
    return ForeignDriver(tuple(packages), tuple(dkms), tuple(trees), tuple(modules),
                         root.exists(AKS_PREBAKE_MARKER))


Unload = Callable[..., bool]  # modules.unload_stale(root, runner, *, want_version)
Purge = Callable[[list[str]], None]  # apt-get purge on the host


def remove_foreign(root: HostRoot, runner: HostRunner, pin_version: str, *, unload: Unload,
                   purge: Purge, ours: frozenset[str] = frozenset()) -> bool:
    """Remove another NVIDIA driver when it is unused; exit 6 naming it when it is in use.

    The caller has withdrawn the hand-off marker (the stale_unload step)."""
    found = find_foreign(root, pin_version, ours)
    if not found:
        log.info("foreign_driver_absent", changed=False)
        return False
    what = found.describe()
    log.warning("foreign_driver_found", driver=what)
    try:
        # Only when idle (no /dev/nvidia* user, no foreign holder, refcnt accounted for).
        unload(root, runner, want_version=pin_version)
    except InstallError as exc:  # DriverInUse stays DriverInUse: the same exit 6, named
        raise type(exc)(
            f"another NVIDIA driver is installed ({what}) and its module is in use: "
            f"{exc.message}", remedy="drain GPU workloads and reboot the node, or remove that "
            "driver yourself (apt-get purge, dkms remove); the agent then installs GRID") from exc
    if found.packages:
        purge(list(found.packages))
    _remove_dkms(root, runner, found)
    if found.aks_prebake:
        for leftover in AKS_PREBAKE_LEFTOVERS:
            _remove_path(root, leftover)
        _remove_path(root, AKS_PREBAKE_MARKER)
        runner.run(["ldconfig"], check=False, timeout=120)
    left = find_foreign(root, pin_version, ours)
    if left:
        raise InstallError(f"another NVIDIA driver could not be fully removed: {left.describe()}",
                           remedy="remove it on the node yourself (apt-get purge, dkms remove)")
    log.info("foreign_driver_removed", driver=what, changed=True)
    return True


def _remove_dkms(root: HostRoot, runner: HostRunner, found: ForeignDriver) -> None:
    # `dkms remove` when the host has it (a package purge usually did it already), then
    # the trees and built modules themselves, as AKS does (`rm -rf /var/lib/dkms/nvidia`).
    if root.which("dkms") is not None:
        for version in found.dkms_versions:
            runner.run(["dkms", "remove", f"nvidia/{version}", "--all"], check=False, timeout=300)
    for version in found.dkms_versions:
        _remove_path(root, f"{DKMS_TREE}/{version}")
    for tree in found.source_trees:
        _remove_path(root, tree)
    for ko in found.dkms_modules:
        _remove_path(root, ko)
    releases = sorted({ko.split("/")[3] for ko in found.dkms_modules})
    for release in releases:
        runner.run(["depmod", "-a", release], check=False, timeout=300)


def _remove_path(root: HostRoot, host_path: str) -> None:
    # Through the door: a link is removed itself, and no parent link leads outside the root.
    root.remove_tree(host_path)


def would_remove(simulation: str) -> set[str]:
    """Packages an `apt-get -s purge|remove` run would take away (its Purg/Remv lines)."""
    return {line.split()[1] for line in simulation.splitlines()
            if line.startswith(("Purg ", "Remv ")) and len(line.split()) > 1}


def purge_with_apt(runner: HostRunner, packages: list[str], *, lock_wait: float) -> None:
    """`apt-get purge` of the other driver's packages, after `apt-get -s` showed it takes
    nothing else (a CUDA toolkit depending on them stays: exit 6 naming it); exit 6 naming
    the packages on failure."""
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        simulated = runner.run(["apt-get", "-q", "-s", "purge", *packages], timeout=300,
                               env=env)
        extra = sorted(would_remove(simulated.stdout) - set(packages))
        if extra:
            raise InstallError(
                f"purging the other NVIDIA driver's packages ({', '.join(packages)}) would "
                f"also remove {', '.join(extra)}",
                remedy="remove that driver yourself, keeping what depends on it, then retry")
        runner.run(["apt-get", "-q", "-y", "-o", f"DPkg::Lock::Timeout={int(lock_wait)}",
                    "purge", *packages], timeout=900 + lock_wait, env=env)
    except HostCommandError as exc:
        tail = (exc.stderr or exc.stdout).strip().splitlines()[-2:]
        raise InstallError(f"cannot purge the other NVIDIA driver's packages "
                           f"({', '.join(packages)}): {' | '.join(tail) or exc.message}",
                           remedy="purge them on the node yourself") from exc


def remove_foreign_driver(root: HostRoot, runner: HostRunner, pin_version: str, *,
                          lock_wait: float) -> bool:
    """The install's use: modules.unload_stale to unload, apt-get purge for the packages."""
    from agent.driver.record import read_record
    from agent.install.modules import unload_stale

    record = read_record(root)
    ours = frozenset({record.module_version}) if record and record.module_version else frozenset()
    return remove_foreign(root, runner, pin_version, unload=unload_stale, ours=ours,
                          purge=lambda pkgs: purge_with_apt(runner, pkgs, lock_wait=lock_wait))
