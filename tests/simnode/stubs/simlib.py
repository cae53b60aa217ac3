"""Shared state of the simulated node's stubs: scenarios, kernel log, "loaded" modules.

Runs inside the simulated host (its /usr/bin/python3). Kernel module loading is
simulated: a "loaded" module is a directory under /sys/module (a tmpfs) plus, for
nvidia, /proc/driver/nvidia/version (a tmpfs); nothing ever reaches the real kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

SCENARIOS = Path("/etc/grid-sim/scenarios")
KERNEL_RELEASE = Path("/etc/grid-sim/kernel_release")
STATE = Path("/run/grid-sim")  # volatile: emptied by a simulated reboot
KMSG = STATE / "kmsg"
ADAPTER_FAILED = STATE / "adapter-failed"  # nvidia loaded, RmInitAdapter failed
SYS_MODULE = Path("/sys/module")
PROC_NVIDIA = Path("/proc/driver/nvidia")
GPU_SLOT = "0000:00:02.0"
OLD_VERSION = "570.172.08"
# Module dependencies, as `modinfo -F depends` of the real driver reports them.
DEPENDS = {"nvidia_uvm": ("nvidia",), "nvidia_modeset": ("nvidia",),
           "nvidia_drm": ("nvidia_modeset",), "nvidia_peermem": ("nvidia",)}
DATE = {"proprietary": "Wed Oct 29 22:49:46 UTC 2025", "open": "Wed Oct 29 22:33:05 UTC 2025"}


def scenarios() -> set[str]:
    try:
        text = SCENARIOS.read_text()
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


def has(name: str) -> bool:
    return name in scenarios()


def kernel_release() -> str:
    return KERNEL_RELEASE.read_text().strip()


def die(message: str, code: int = 1) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.exit(code)


def kmsg(*lines: str) -> None:
    """Append to the simulated kernel log (what `dmesg` prints)."""
    STATE.mkdir(parents=True, exist_ok=True)
    stamp = time.clock_gettime(time.CLOCK_BOOTTIME)
    with KMSG.open("a") as f:
        for line in lines:
            f.write(f"[{stamp:12.6f}] {line}\n")


def norm(name: str) -> str:
    return name.replace("-", "_")


# -- "loaded" modules ------------------------------------------------------------------------


def loaded(name: str) -> bool:
    return (SYS_MODULE / norm(name) / "refcnt").exists()


def loaded_names() -> list[str]:
    if not SYS_MODULE.is_dir():
        return []
    return sorted(p.name for p in SYS_MODULE.iterdir() if (p / "refcnt").exists())


def in_use_extra(name: str) -> int:
    """Open handles on the module (the module-in-use scenario's holder process)."""
    return 1 if name == "nvidia" and holder_pid("cuda-app") else 0


def refresh_refcnt(name: str) -> None:
    mod = SYS_MODULE / name
    if not (mod / "refcnt").exists():
        return
    holders = len(list((mod / "holders").iterdir()))
    (mod / "refcnt").write_text(f"{holders + in_use_extra(name)}\n")


def refcnt(name: str) -> int:
    try:
        return int((SYS_MODULE / norm(name) / "refcnt").read_text())
    except (OSError, ValueError):
        return 0


def proc_version_text(version: str, module_type: str) -> str:
    if module_type == "open":
        head = (f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  "
                f"Release Build  (dvs-builder@U22-I3-AE18-23-3)  {DATE['open']}")
    else:
        head = f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  {DATE['proprietary']}"
    return f"{head}\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1) \n"


def mark_loaded(name: str, version: str | None, module_type: str | None) -> None:
    """Write the sysfs (and procfs) files a loaded module has."""
    name = norm(name)
    mod = SYS_MODULE / name
    (mod / "holders").mkdir(parents=True, exist_ok=True)
    (mod / "initstate").write_text("live\n")
    (mod / "taint").write_text("POE\n" if module_type == "proprietary" else "OE\n")
    if version:
        (mod / "version").write_text(f"{version}\n")
    (mod / "refcnt").write_text("0\n")
    for dep in DEPENDS.get(name, ()):
        link = SYS_MODULE / dep / "holders" / name
        if not link.is_symlink():
            link.symlink_to(f"../../{name}")
        refresh_refcnt(dep)
    if name == "nvidia" and version and module_type:
        gpu = PROC_NVIDIA / "gpus" / GPU_SLOT
        gpu.mkdir(parents=True, exist_ok=True)
        (PROC_NVIDIA / "version").write_text(proc_version_text(version, module_type))
        (gpu / "information").write_text(
            "Model: \t\t NVIDIA RTX PRO 6000 Blackwell Server Edition\nIRQ:   \t\t 36\n"
            f"Bus Location: \t {GPU_SLOT}\nDevice Minor: \t 0\n")
    refresh_refcnt(name)


def mark_unloaded(name: str) -> None:
    name = norm(name)
    shutil.rmtree(SYS_MODULE / name, ignore_errors=True)
    for dep in DEPENDS.get(name, ()):
        link = SYS_MODULE / dep / "holders" / name
        if link.is_symlink():
            link.unlink()
        refresh_refcnt(dep)
    if name == "nvidia":
        shutil.rmtree(PROC_NVIDIA, ignore_errors=True)


# -- installed driver files ------------------------------------------------------------------

_MODINFO = re.compile(rb"(?:^|\x00)(version|license|vermagic|name)=([^\x00]*)")


def module_file(name: str, release: str | None = None) -> Path | None:
    """The installed .ko for a module name under /lib/modules/<release>."""
    base = Path("/lib/modules") / (release or kernel_release())
    if not base.is_dir():
        return None
    wanted = {f"{norm(name)}.ko", f"{name.replace('_', '-')}.ko"}
    # depmod's search order: updates/ (where DKMS puts its builds) before the rest.
    for path in sorted(base.rglob("*.ko"), key=lambda p: ("/updates/" not in str(p), str(p))):
        if path.name in wanted:
            return path
    return None


def modinfo(path: Path) -> dict[str, str]:
    """The .modinfo fields of a real .ko (version, license, vermagic, name)."""
    data = path.read_bytes()
    return {k.decode(): v.decode(errors="replace") for k, v in _MODINFO.findall(data)}


def module_type_of(info: dict[str, str]) -> str:
    return "open" if info.get("license") == "Dual MIT/GPL" else "proprietary"


# -- background helpers (lock holders, "processes" holding the GPU) --------------------------


def holder_pid(name: str) -> int | None:
    try:
        pid = int((STATE / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def daemonize(name: str) -> bool:
    """Fork a detached child named `name` (its /proc comm); True in the child."""
    if os.fork():
        return False
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    Path("/proc/self/comm").write_text(name[:15])
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / f"{name}.pid").write_text(f"{os.getpid()}\n")
    return True


def stop_holder(name: str) -> None:
    pid = holder_pid(name)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                break
            time.sleep(0.01)
    (STATE / f"{name}.pid").unlink(missing_ok=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
