"""The node as one read-only Snapshot, taken through the host doors; judgements are pure."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from agent.driver.nvsmi import SmiOutcome, run_smi
from agent.driver.record import InstallRecord, prebuilds_of, read_state, record_of
from agent.driver.state import ModuleState, read_module_state
from agent.handoff import Handoff, inspect_handoff
from agent.host.kernel import host_kernel_release
from agent.host.paths import SMI
from agent.host.root import HostRoot
from agent.host.runner import HostRunner


@dataclass(frozen=True)
class Snapshot:
    """What install, verify, the plan and watch all judge: read once, never changed."""

    modules: ModuleState  # the one /sys/module reading
    record: InstallRecord | None  # /var/lib/grid-agent/state.json
    handoff: Handoff | None  # None when not looked at
    smi: SmiOutcome | None = None  # None when nvidia-smi was not run
    smi_binary: str | None = None  # what is wrong with /usr/bin/nvidia-smi; None when fine
    kernel_release: str | None = None  # `uname -r` on the host, when asked
    # state.json's prebuilds, from the same single read as the record
    prebuilds: dict[str, dict[str, Any]] = field(default_factory=dict)


def smi_binary_problem(root: HostRoot) -> str | None:
    """A non-empty regular executable at /usr/bin/nvidia-smi, as the validator demands."""
    try:
        path = root.resolve(SMI)
        info = path.stat()
    except OSError:
        return f"{SMI} is missing on the host"
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return f"{SMI} on the host is not a non-empty regular file"
    if not os.access(path, os.X_OK):
        return f"{SMI} on the host is not executable"
    return None


def take_snapshot(root: HostRoot, runner: HostRunner, *, smi: bool = True, kernel: bool = False,
                  handoff: bool = True, timeout: float | None = None) -> Snapshot:
    """Files first (free); then `uname -r` if asked, then nvidia-smi and nvidia-smi -q -x."""
    modules = read_module_state(root)
    state = read_state(root)  # once: the record and the prebuilds (one warning if corrupt)
    seen = inspect_handoff(root) if handoff else None
    binary = smi_binary_problem(root) if smi else None
    release = host_kernel_release(runner) if kernel else None
    outcome = run_smi(runner, timeout=timeout) if smi else None
    return Snapshot(modules, record_of(state), seen, outcome, binary, release,
                    prebuilds_of(state))
