"""The one reader of /sys/module (and /proc/driver/nvidia/version): file reads only, no process.

One meaning of "loaded": the module's code is running in the kernel. A loadable module is
loaded when its initstate is `live` (or, on trees without initstate, it has a refcnt); code
built into the kernel is loaded too, and shows a /sys/module directory with `parameters/` or
`version` but no refcnt, holders or initstate. Built-in code can never be unloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.host.paths import PROC_DRIVER_VERSION, sys_module
from agent.host.root import HostRoot

ABSENT, LIVE, COMING, GOING, BUILTIN = "absent", "live", "coming", "going", "builtin"
# First line of /proc/driver/nvidia/version; the open flavour says "Open Kernel Module".
_NVRM = re.compile(r"NVRM version:.*?Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)")


@dataclass(frozen=True)
class Module:
    """One /sys/module entry as the kernel shows it."""

    name: str
    state: str = ABSENT  # absent | live | coming | going | builtin
    refcnt: int | None = None  # None for built-in code and absent modules
    holders: tuple[str, ...] = ()
    version: str | None = None

    @property
    def loaded(self) -> bool:
        return self.state in (LIVE, BUILTIN)

    @property
    def builtin(self) -> bool:
        return self.state == BUILTIN


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _holders(root: HostRoot, base: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(entry.name for entry in root.resolve(f"{base}/holders").iterdir()))
    except OSError:
        return ()


def _state(root: HostRoot, base: str, refcnt_text: str | None) -> str:
    initstate = root.read_text(f"{base}/initstate")
    if initstate is not None:
        return initstate.strip() or ABSENT
    if refcnt_text is not None:
        return LIVE
    if root.exists(f"{base}/version") or root.exists(f"{base}/parameters"):
        return BUILTIN
    return ABSENT  # no directory, or an empty one


def read_module(root: HostRoot, name: str) -> Module:
    """What /sys/module says about one module (nvidia-uvm and nvidia_uvm alike); never raises."""
    base = sys_module(name)
    refcnt_text = root.read_text(f"{base}/refcnt")
    state = _state(root, base, refcnt_text)
    if state == ABSENT:
        return Module(name.replace("-", "_"))
    version = (root.read_text(f"{base}/version") or "").strip() or None
    return Module(name.replace("-", "_"), state, _int(refcnt_text),
                  _holders(root, base) if state != BUILTIN else (), version)


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


@dataclass(frozen=True)
class ModuleState:
    """The nvidia module (with what procfs adds) and nouveau, from one reading."""

    nvidia: Module
    nouveau: Module
    proc_version: str | None = None  # from /proc/driver/nvidia/version
    proc_type: str | None = None  # open | proprietary | None (unknown)

    @property
    def loaded(self) -> bool:
        return self.nvidia.loaded

    @property
    def version(self) -> str | None:  # e.g. 580.105.08
        return (self.nvidia.version or self.proc_version) if self.loaded else None

    @property
    def module_type(self) -> str | None:
        return self.proc_type if self.loaded else None

    @property
    def refcnt(self) -> int | None:
        return self.nvidia.refcnt

    @property
    def holders(self) -> tuple[str, ...]:
        return self.nvidia.holders

    @property
    def nouveau_loaded(self) -> bool:
        return self.nouveau.loaded


def read_module_state(root: HostRoot) -> ModuleState:
    """Everything the files say about the nvidia module (and nouveau), never raising."""
    version, module_type = proc_version_info(root.read_text(PROC_DRIVER_VERSION))
    return ModuleState(read_module(root, "nvidia"), read_module(root, "nouveau"),
                       version, module_type)
