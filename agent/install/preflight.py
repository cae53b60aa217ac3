"""Preflight: refuse early, with the remedy, what would make the install fail or hang."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog

from agent.catalog import known_bad_kernel
from agent.errors import HostCommandError, HostCommandMissing, PreflightError, last_lines
from agent.handoff import run_is_shared
from agent.host.kernel import host_kernel_release
from agent.host.mounts import read_mountinfo
from agent.host.paths import CACHE_DIR, MODULES_DIR
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.settings import Settings
from agent.vgpu import BEHIND, REFUSE, UNKNOWN, judge_guest, read_host_vgpu, remedy_for

log = structlog.get_logger(__name__)

SUPPORTED = (("ubuntu", "22.04"), ("ubuntu", "24.04"))
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
# EFI_GLOBAL_VARIABLE's GUID: 4 attribute bytes, then 1 data byte (1 = enabled).
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
# Where the install writes: the .run cache, the driver's files, the kernel modules.
DISK_PATHS = (CACHE_DIR, "/usr", MODULES_DIR)
_NSENTER_DENIED = ("Operation not permitted", "reassociate to namespace", "Permission denied")
MB = 1024 * 1024


@dataclass(frozen=True)
class Preflight:
    kernel_release: str
    os_id: str
    os_version: str
    secure_boot: str  # enabled | disabled | unknown (enabled never gets this far)
    headers: bool  # present now (else the packages step installs them)
    warnings: tuple[str, ...] = ()  # known risks that do not stop the install


def check_nsenter(runner: HostRunner) -> None:
    """A first trivial host command: EPERM from nsenter becomes the fix, not noise."""
    try:
        runner.run(["true"], timeout=30)
    except HostCommandError as exc:
        text = f"{exc.stderr}\n{exc.stdout}"
        if any(word in text for word in _NSENTER_DENIED):
            raise PreflightError(
                f"cannot enter the host's namespaces: {last_lines(text, 2)}",
                remedy="run the pod privileged with hostPID: true") from exc
        raise PreflightError(f"cannot run commands on the host: {exc.message}",
                             remedy="check --host-pid and that nsenter works") from exc


def check_host_pid(root: HostRoot, pid: int | None) -> None:
    """nsenter's target must be the host's PID 1: without hostPID it is the pod's own init."""
    if pid is None:
        return  # on the VM itself: no namespaces to enter
    try:
        target = str(Path(f"/proc/{pid}/ns/mnt").readlink())
        host = str(root.path("/proc/1/ns/mnt").readlink())
    except OSError as exc:
        log.warning("host_pid_unverified", reason=str(exc))
        return
    if target != host:
        raise PreflightError(
            f"PID {pid} is not the host's init (its mount namespace {target} is not the "
            f"host's {host}): host commands would run inside the pod",
            remedy="run the pod privileged with hostPID: true")


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines with shell quoting, as os-release(5) defines them."""
    values = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            try:
                words = shlex.split(raw, comments=False)
            except ValueError:
                continue
            values[key.strip()] = words[0] if words else ""
    return values


def check_os(root: HostRoot, *, allow_unsupported: bool = False) -> tuple[str, str]:
    """(ID, VERSION_ID) of the host; anything but Ubuntu 22.04/24.04 is refused."""
    text = next((t for t in (root.read_text(p) for p in OS_RELEASE) if t is not None), None)
    if text is None:
        raise PreflightError("cannot read the host's /etc/os-release",
                             remedy="check --host-root points at the host's /")
    info = parse_os_release(text)
    found = (info.get("ID", "").lower(), info.get("VERSION_ID", ""))
    if found in SUPPORTED:
        return found
    name = info.get("PRETTY_NAME") or f"{found[0] or 'unknown'} {found[1]}".strip()
    message = (f"unsupported host OS {name!r} (ID={found[0]}, VERSION_ID={found[1]}); "
               "supported: Ubuntu 22.04, Ubuntu 24.04")
    if not allow_unsupported:
        raise PreflightError(message, remedy="use an Ubuntu 22.04/24.04 node image, or set "
                             "GRID_AGENT_ALLOW_UNSUPPORTED_OS=true at your own risk")
    log.warning("unsupported_os_allowed", os_id=found[0], os_version=found[1])
    return found


def secure_boot_from_efivar(data: bytes) -> bool | None:
    """4 attribute bytes, then 1 data byte: 1 means enabled."""
    return data[4] == 1 if len(data) >= 5 else None


def secure_boot_from_mokutil(text: str) -> bool | None:
    lowered = text.lower()
    if "secureboot enabled" in lowered:
        return True
    if "secureboot disabled" in lowered or "not support" in lowered or "n't support" in lowered:
        return False
    return None


def secure_boot_state(root: HostRoot, runner: HostRunner) -> bool | None:
    """From the EFI variable, else `mokutil --sb-state`; None when neither can tell."""
    try:
        state = secure_boot_from_efivar(root.path(SECURE_BOOT_VAR).read_bytes())
    except OSError:
        state = None
    if state is not None:
        return state
    try:
        result = runner.run(["mokutil", "--sb-state"], check=False, timeout=30)
    except (HostCommandError, HostCommandMissing):
        return None  # mokutil is not installed, or could not start
    return secure_boot_from_mokutil(f"{result.stdout}\n{result.stderr}")


def check_secure_boot(root: HostRoot, runner: HostRunner) -> str:
    """Refuse before anything is built: an unsigned module cannot load (and installs hang)."""
    state = secure_boot_state(root, runner)
    if state:
        raise PreflightError(
            "Secure Boot is enabled on this node: the GRID driver's unsigned kernel module "
            "cannot load (the installer is known to hang)",
            remedy="use a VM without Secure Boot/Trusted Launch (securityType Standard), "
                   "or disable Secure Boot")
    if state is None:
        log.warning("secure_boot_unknown", reason="no readable EFI variable and no mokutil "
                    "answer; continuing")
        return "unknown"
    return "disabled"


def check_run_shared(root: HostRoot) -> None:
    """Host /run must propagate mounts, or the GPU Operator never sees the driver root."""
    mountinfo = read_mountinfo(root)
    if not mountinfo:
        raise PreflightError("cannot read the host's mount table (/proc/1/mountinfo)",
                             remedy="run with hostPID: true and the host's / at --host-root")
    if not run_is_shared(mountinfo):
        raise PreflightError(
            "host /run is not a shared mount, so the GPU Operator's pods would never see "
            "/run/nvidia/driver", remedy="run `mount --make-rshared /run` on the host "
            "(systemd hosts share it by default)")


def headers_present(root: HostRoot, kernel_release: str) -> bool:
    """Kernel headers for this release, looked up inside the root (the build link is absolute)."""
    for candidate in (f"/lib/modules/{kernel_release}/build",
                      f"/usr/src/linux-headers-{kernel_release}"):
        try:
            if (root.resolve(candidate) / "Makefile").is_file():
                return True
        except OSError:
            continue
    return False


def _existing(root: HostRoot, host_path: str) -> PurePosixPath:
    path = PurePosixPath(host_path)
    while not root.exists(path) and path != path.parent:
        path = path.parent
    return path


def check_disk(root: HostRoot, host_path: str, need_bytes: int) -> int:
    """Free bytes on the filesystem holding `host_path` (or its nearest existing parent)."""
    where = _existing(root, host_path)
    try:
        info = os.statvfs(root.resolve(where))
    except OSError as exc:
        raise PreflightError(f"cannot check free space of {host_path}: {exc.strerror}") from exc
    free = info.f_bavail * info.f_frsize
    if free < need_bytes:
        raise PreflightError(
            f"not enough free space for {host_path}: {free // MB} MiB free, "
            f"{need_bytes // MB} MiB needed",
            remedy="free disk space on the node (or lower GRID_AGENT_MIN_FREE_MB)")
    return free


def check_disks(root: HostRoot, need_bytes: int) -> None:
    """Each filesystem the install writes to, once."""
    seen: set[int] = set()
    for host_path in DISK_PATHS:
        try:
            dev = root.resolve(_existing(root, host_path)).stat().st_dev
        except OSError:
            dev = -1
        if dev in seen:
            continue
        seen.add(dev)
        check_disk(root, host_path, need_bytes)


def check_headers(root: HostRoot, kernel_release: str) -> bool:
    """Headers present, or apt-get on the host to install them (the packages step)."""
    if headers_present(root, kernel_release):
        return True
    if root.which("apt-get") is None:
        raise PreflightError(
            f"kernel headers for {kernel_release} are missing and the host has no apt-get",
            remedy=f"install linux-headers-{kernel_release} on the node")
    log.info("headers_missing", kernel_release=kernel_release, then="packages step installs")
    return False


def warn_known_bad_kernel(kernel_release: str) -> tuple[str, ...]:
    """The catalog's known-bad kernels: a warning with the advice and its source, no refusal."""
    found = []
    for bad in known_bad_kernel(kernel_release):
        log.warning("known_bad_kernel", kernel_release=kernel_release, problem=bad.problem,
                    advice=bad.advice, source=bad.source)
        found.append(f"kernel {kernel_release}: {bad.problem}; {bad.advice} ({bad.source})")
    return tuple(found)


def check_host_branch(root: HostRoot, guest_version: str) -> tuple[str, ...]:
    """Refuse a pin the host's vGPU manager cannot run; warn one branch behind; unknown is a
    logged fact (no vGPU capability, e.g. pass-through, or an unprivileged read)."""
    host, why = read_host_vgpu(root)
    level, reason = judge_guest(guest_version, host)
    if host is None or level == UNKNOWN:
        log.info("host_vgpu_unknown", reason=reason, detail=why or None)
        return ()
    log.info("host_vgpu", version=host.version, branch=host.branch, slot=host.slot,
             vgpu_release=host.vgpu_release, guest=guest_version, compatible=level)
    if level == REFUSE:
        raise PreflightError(f"{reason}: the vGPU would fail to load", remedy=remedy_for(host))
    if level == BEHIND:
        log.warning("guest_branch_behind_host", reason=reason, remedy=remedy_for(host))
        return (f"{reason}; {remedy_for(host)}",)
    return ()


def run_preflight(settings: Settings, root: HostRoot, runner: HostRunner) -> Preflight:
    """Every check, cheapest first; the first failure raises PreflightError (exit 4)."""
    check_nsenter(runner)
    check_host_pid(root, getattr(runner, "pid", None))
    os_id, os_version = check_os(root, allow_unsupported=settings.allow_unsupported_os)
    secure_boot = check_secure_boot(root, runner)
    check_run_shared(root)
    warnings = check_host_branch(root, settings.driver_version)
    kernel_release = host_kernel_release(runner)
    warnings += warn_known_bad_kernel(kernel_release)
    headers = check_headers(root, kernel_release)
    check_disks(root, settings.min_free_mb * MB)
    found = Preflight(kernel_release, os_id, os_version, secure_boot, headers, warnings)
    log.info("preflight_passed", kernel_release=kernel_release, os=f"{os_id} {os_version}",
             secure_boot=secure_boot, headers=headers, changed=False)
    return found
