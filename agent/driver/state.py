"""The kernel module state the host's sysfs and procfs describe (file reads only, no process)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.host.paths import PROC_DRIVER_VERSION as PROC_VERSION
from agent.host.paths import sys_module
from agent.host.root import HostRoot

# First line of /proc/driver/nvidia/version; the open flavour says "Open Kernel Module".
_NVRM = re.compile(r"NVRM version:.*?Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)")


@dataclass(frozen=True)
class ModuleState:
    loaded: bool
    version: str | None  # e.g. 580.105.08
    module_type: str | None  # open | proprietary | None (unknown)
    refcnt: int | None
    holders: tuple[str, ...]
    nouveau_loaded: bool


def module_refcnt(root: HostRoot, name: str) -> int | None:
    """The module's use count, or None when it is not loaded (or not a loadable module)."""
    text = root.read_text(f"{sys_module(name)}/refcnt")
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def module_loaded(root: HostRoot, name: str) -> bool:
    """True when the module is live: its refcnt (or, failing that, its version) is present."""
    base = sys_module(name)
    if root.exists(f"{base}/refcnt"):
        return True
    state = root.read_text(f"{base}/initstate")
    if state is not None:
        return state.strip() == "live"
    return root.exists(f"{base}/version")


def _holders(root: HostRoot, name: str) -> tuple[str, ...]:
    try:
        entries = root.resolve(f"{sys_module(name)}/holders").iterdir()
        return tuple(sorted(entry.name for entry in entries))
    except OSError:
        return ()


def proc_version_info(text: str | None) -> tuple[str | None, str | None]:
    """(version, module type) from the first line of /proc/driver/nvidia/version."""
    if not text:
        return None, None
    first = text.splitlines()[0] if text.splitlines() else ""
    found = _NVRM.search(first)
    version = found.group(1) if found else None
    if "Open Kernel Module" in first:
        return version, "open"
    if "Kernel Module" in first:
        return version, "proprietary"
    return version, None


def read_module_state(root: HostRoot) -> ModuleState:
    """Everything the files say about the nvidia module (and nouveau), never raising."""
    loaded = module_loaded(root, "nvidia")
    sys_version = root.read_text("/sys/module/nvidia/version")
    proc_version, module_type = proc_version_info(root.read_text(PROC_VERSION))
    version = (sys_version or "").strip() or proc_version
    return ModuleState(
        loaded=loaded,
        version=version if loaded else None,
        module_type=module_type if loaded else None,
        refcnt=module_refcnt(root, "nvidia"),
        holders=_holders(root, "nvidia") if loaded else (),
        nouveau_loaded=root.exists("/sys/module/nouveau"),
    )
