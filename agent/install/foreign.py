"""Another NVIDIA driver installation on the host (found by agent/driver/foreign.py):
removed when unused.

AKS tears such a driver down the same way (AgentBaker `cleanUpPrebakedGPUDriver`): unload
it only when idle, remove its DKMS registration and its built modules, its libraries and
binaries; we also purge its packages with apt. A driver that is loaded and in use is never
touched: exit 6, naming it.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agent.driver.foreign import AKS_PREBAKE_MARKER, DKMS_TREE, ForeignDriver, find_foreign, ours_of
from agent.errors import HostCommandError, InstallError
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

log = structlog.get_logger(__name__)

# The prebake's staged libraries (AgentBaker `cleanUpPrebakedGPUDriver`).
AKS_PREBAKE_LEFTOVERS = ("/usr/bin/lib64", "/etc/ld.so.conf.d/nvidia.conf")


def removal(found: ForeignDriver) -> str:
    """What the install's stale_unload step does about it (remove_foreign), in words."""
    steps = ["unload its module"]
    if found.dkms_versions or found.source_trees or found.dkms_modules:
        steps.append("remove its DKMS trees and modules")  # first: a purge takes its source
    if found.packages:
        steps.append("apt-get purge its packages")
    if found.aks_prebake:
        steps.append("drop the AKS prebake's leftovers")
    return f"{', '.join(steps)} when unused, else exit 6 naming it and its users"


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
    _dkms_remove(root, runner, found)
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


def _dkms_remove(root: HostRoot, runner: HostRunner, found: ForeignDriver) -> None:
    # Before the purge: DKMS reads <tree>/source/dkms.conf, which the purge deletes (then
    # `dkms remove` is exit 3, "not located in the DKMS tree"); a package's prerm that
    # removes it itself finds nothing left and skips.
    if root.which("dkms") is not None:
        for version in found.dkms_versions:
            runner.run(["dkms", "remove", f"nvidia/{version}", "--all"], check=False, timeout=300)


def _remove_dkms(root: HostRoot, runner: HostRunner, found: ForeignDriver) -> None:
    # What `dkms remove` left (no dkms, or it failed): the trees and built modules
    # themselves, as AKS does (`rm -rf /var/lib/dkms/nvidia`).
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

    ours = ours_of(read_record(root))
    return remove_foreign(root, runner, pin_version, unload=unload_stale, ours=ours,
                          purge=lambda pkgs: purge_with_apt(runner, pkgs, lock_wait=lock_wait))
