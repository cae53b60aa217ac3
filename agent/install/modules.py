"""Kernel modules on the host: safe unload of a stale driver, load, device nodes, persistenced."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import structlog

from agent.driver.state import Module, read_module
from agent.errors import HostCommandError, InstallError, last_lines
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.host.systemd import host_has_systemd, unit_exists, unit_status

log = structlog.get_logger(__name__)

# Dependency order: each module is unloaded only after the ones that use it.
STACK = ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia_peermem", "nvidia")
# Without -a, modprobe reads the extra names as parameters of the first module.
LOAD_ARGV = ("modprobe", "-a", "nvidia", "nvidia-uvm", "nvidia-modeset")
DEVICE_ARGVS = (("nvidia-modprobe", "-c0"), ("nvidia-modprobe", "-u", "-c0"))
# A validator once went Ready with the uvm nodes missing (docs/design/gpu-operator-contract.md 2).
DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
PERSISTENCED = "nvidia-persistenced"
PERSISTENCED_UNIT = f"{PERSISTENCED}.service"
# The .run installs the daemon but no unit (only a sample tarball), so we supply one.
PERSISTENCED_UNIT_TEXT = """\
# Written by grid-agent: the NVIDIA .run installs no unit for the persistence daemon.
[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""
# The old driver's own daemons keep /dev/nvidia* open; they go with it (the GPU Operator's
# driver container stops them the same way before unloading), and later steps restart them.
DRIVER_DAEMONS = ("nvidia-persistenced", "nvidia-gridd")
DAEMON_STOP_WAIT = 10.0
_GPU_DEVICE = re.compile(r"(^|/)dev/nvidia")  # nvidia0, nvidiactl, nvidia-uvm, nvidia-caps/...
_TASK_NAME_MAX = 15  # the kernel truncates /proc/PID/comm to 15 characters
_DAEMON_COMMS = {name[:_TASK_NAME_MAX] for name in DRIVER_DAEMONS}


# -- module and process state, read from the host's files ---------------------------------


@dataclass(frozen=True)
class HostProcess:
    pid: int
    comm: str

    def label(self) -> str:
        return f"{self.pid} ({self.comm})"


def _pids(root: HostRoot) -> list[int]:
    try:
        return sorted(int(p.name) for p in root.path("/proc").iterdir() if p.name.isdigit())
    except OSError:
        return []


def _comm(root: HostRoot, pid: int) -> str:
    return (root.read_text(f"/proc/{pid}/comm", "?") or "?").strip()


def gpu_users(root: HostRoot) -> list[HostProcess]:
    """Host processes with a /dev/nvidia* file open (from /proc/*/fd links)."""
    users = []
    for pid in _pids(root):
        fd_dir = root.path(f"/proc/{pid}/fd")
        try:
            links = [fd.readlink() for fd in fd_dir.iterdir()]
        except OSError:  # gone, or a kernel thread
            continue
        if any(_GPU_DEVICE.search(str(link).removesuffix(" (deleted)")) for link in links):
            users.append(HostProcess(pid, _comm(root, pid)))
    return users


def processes_named(root: HostRoot, name: str) -> list[HostProcess]:
    """Host processes whose comm is `name` (as the kernel truncates it)."""
    want = name[:_TASK_NAME_MAX]
    found = [HostProcess(pid, _comm(root, pid)) for pid in _pids(root)]
    return [p for p in found if p.comm == want]


def failure_lines(exc: HostCommandError, count: int = 3) -> str:
    """The command's own error lines, for a message a person can act on."""
    return last_lines(exc.stderr or exc.stdout, count) or exc.message


# -- stale driver --------------------------------------------------------------------------


def _users(root: HostRoot, *, daemons: bool) -> list[str]:
    return [f"pid {p.label()} has /dev/nvidia* open" for p in gpu_users(root)
            if daemons or p.comm not in _DAEMON_COMMS]


def _foreign_holders(loaded: list[Module]) -> list[str]:
    reasons = []
    for mod in loaded:
        foreign = [h for h in mod.holders if h not in STACK]
        if foreign:
            reasons.append(f"{mod.name} is held by module(s) {', '.join(foreign)}")
        if mod.builtin:
            reasons.append(f"{mod.name} is built into the kernel")
    return reasons


def _extra_references(root: HostRoot, loaded: list[Module]) -> list[str]:
    reasons = []
    names = {mod.name for mod in loaded}
    for mod in (read_module(root, m.name) for m in loaded):  # after the daemons stopped
        # Each holder in the stack goes first and takes one reference with it.
        inner = sum(1 for h in mod.holders if h in names)
        if mod.refcnt is not None and mod.refcnt > inner:
            reasons.append(f"{mod.name} has refcnt {mod.refcnt} (in use)")
    return reasons


def stop_driver_daemons(root: HostRoot, runner: HostRunner, *, disable: bool = False,
                        wait: float = DAEMON_STOP_WAIT) -> list[str]:
    """The one way nvidia-persistenced and nvidia-gridd are stopped (stale unload, uninstall):
    through their systemd unit (`disable --now` for uninstall), then a kill of any process
    left; returns the names it acted on."""
    systemd = host_has_systemd(root)
    acted = []
    for name in DRIVER_DAEMONS:
        unit = f"{name}.service"
        left = processes_named(root, name)
        touched = False
        if systemd and disable:
            if any(unit_status(runner, unit)):  # enabled or active
                runner.run(["systemctl", "disable", "--now", unit], check=False, timeout=60)
                touched = True
        elif systemd and left and unit_exists(root, unit):
            runner.run(["systemctl", "stop", unit], check=False, timeout=60)
            touched = True
        if touched and left:
            left = _wait_gone(root, name, wait)
        if left:
            runner.run(["kill", *(str(p.pid) for p in left)], check=False, timeout=30)
            _wait_gone(root, name, wait)
            touched = True
        if touched:
            acted.append(name)
    return acted


def _wait_gone(root: HostRoot, name: str, wait: float) -> list[HostProcess]:
    deadline = time.monotonic() + wait
    while (left := processes_named(root, name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class DriverInUse(InstallError):
    """The loaded driver cannot be replaced while GPU workloads hold it (exit 6, "reboot
    required"); a configured reboot sentinel turns it into a staged upgrade (upgrade.py)."""


def in_use_reasons(root: HostRoot) -> list[str]:
    """Who holds the loaded driver, the driver's own daemons aside; [] when it could go."""
    loaded = [mod for mod in (read_module(root, m) for m in STACK) if mod.loaded]
    return _users(root, daemons=False) + _foreign_holders(loaded) if loaded else []


def _refuse(have: str | None, want: str, reasons: list[str]) -> InstallError:
    return DriverInUse(
        f"reboot required: NVIDIA driver {have or 'of unknown version'} is loaded and in "
        f"use ({'; '.join(reasons)}); it cannot be replaced "
        f"{f'by {want} ' if want else ''}while running",
        remedy="drain GPU workloads and reboot the node; the agent installs after the reboot")


def unload_stale(root: HostRoot, runner: HostRunner, *, want_version: str,
                 daemon_wait: float = DAEMON_STOP_WAIT) -> bool:
    """Unload a different loaded driver when nothing uses it; else 'reboot required'."""
    nvidia = read_module(root, "nvidia")
    if not nvidia.loaded:
        log.info("stale_driver_absent", changed=False)
        return False
    have = nvidia.version
    if have == want_version:
        log.info("stale_driver_absent", loaded=have, changed=False)
        return False
    loaded = [mod for mod in (read_module(root, m) for m in STACK) if mod.loaded]
    # Refuse before touching anything when someone else uses the GPU.
    blockers = _users(root, daemons=False) + _foreign_holders(loaded)
    if blockers:
        raise _refuse(have, want_version, blockers)
    stopped = stop_driver_daemons(root, runner, wait=daemon_wait)
    blockers = _users(root, daemons=True) + _extra_references(root, loaded)
    if blockers:
        raise _refuse(have, want_version, blockers)
    for mod in loaded:
        _rmmod(root, runner, mod.name, have)
    log.info("stale_driver_unloaded", version=have, modules=[m.name for m in loaded],
             daemons_stopped=stopped,
             changed=True)
    return True


def _rmmod(root: HostRoot, runner: HostRunner, name: str, have: str | None) -> None:
    count = read_module(root, name).refcnt
    if count:  # re-read right before: never rmmod a module in use, never -f
        raise InstallError(f"reboot required: {name} (driver {have}) gained users (refcnt "
                           f"{count}) while unloading", remedy="drain GPU workloads and reboot")
    try:
        runner.run(["rmmod", name], timeout=60)
    except HostCommandError as exc:
        raise InstallError(f"reboot required: rmmod {name} failed: {failure_lines(exc)}",
                           remedy="drain GPU workloads and reboot the node") from exc


# -- load and device nodes -----------------------------------------------------------------


def _missing_nodes(root: HostRoot) -> list[str]:
    return [node for node in DEVICE_NODES if not root.path(node).exists()]


def load_modules(root: HostRoot, runner: HostRunner) -> bool:
    """`modprobe -a nvidia nvidia-uvm nvidia-modeset` and nvidia-modprobe for the nodes."""
    unloaded = [m for m in ("nvidia", "nvidia_uvm", "nvidia_modeset")
                if not read_module(root, m).loaded]
    missing = _missing_nodes(root)
    if not unloaded and not missing:
        log.info("modules_loaded", changed=False)
        return False
    if unloaded:
        _host(runner, LOAD_ARGV, "loading the NVIDIA kernel modules failed")
    for argv in DEVICE_ARGVS:
        _host(runner, argv, "creating the NVIDIA device files failed")
    still = _missing_nodes(root)
    if still:
        raise InstallError(f"device files missing after loading the driver: {', '.join(still)}",
                           remedy="check the host's kernel log (dmesg) for NVRM errors")
    log.info("modules_loaded", loaded=unloaded, nodes_created=missing, changed=True)
    return True


def _host(runner: HostRunner, argv: tuple[str, ...], what: str) -> None:
    try:
        runner.run(list(argv), timeout=120)
    except HostCommandError as exc:
        raise InstallError(f"{what}: `{' '.join(argv)}`: {failure_lines(exc)}",
                           remedy="check the host's kernel log (dmesg) for NVRM errors") from exc


# -- persistence daemon --------------------------------------------------------------------


def ensure_persistenced(root: HostRoot, runner: HostRunner) -> bool:
    """nvidia-persistenced enabled and running: a systemd unit when the host has systemd."""
    if host_has_systemd(root):
        return _persistenced_unit(root, runner)
    if processes_named(root, PERSISTENCED):
        log.info("persistenced_running", changed=False)
        return False
    _host(runner, (PERSISTENCED,), "starting nvidia-persistenced failed")
    log.info("persistenced_started", changed=True)
    return True


def _persistenced_unit(root: HostRoot, runner: HostRunner) -> bool:
    wrote = False
    if not unit_exists(root, PERSISTENCED_UNIT):
        root.write_file(f"/etc/systemd/system/{PERSISTENCED_UNIT}", PERSISTENCED_UNIT_TEXT)
        _host(runner, ("systemctl", "daemon-reload"), "systemctl daemon-reload failed")
        wrote = True
    if not wrote and all(unit_status(runner, PERSISTENCED_UNIT)):
        log.info("persistenced_running", changed=False)
        return False
    _host(runner, ("systemctl", "enable", "--now", PERSISTENCED_UNIT),
          "enabling nvidia-persistenced failed")
    log.info("persistenced_enabled", unit_written=wrote, changed=True)
    return True
