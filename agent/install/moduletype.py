"""The kernel module type one install builds: chosen once (installer.py's rule), and the one
fallback from proprietary to open when the kernel says the GPU requires open."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agent.errors import AgentError, InstallError
from agent.install import installer as inst
from agent.install.flow import Flow

log = structlog.get_logger(__name__)


def choose(flow: Flow) -> inst.ModuleChoice:
    """The setting mapped to the first type to try; `auto` asks the cached installer."""
    recommended = None
    if flow.pin.requested == "auto":
        recommended = flow.kit.recommended_type(flow.root, flow.runner, flow.run_path,
                                                timeout=flow.settings.install_timeout)
    return inst.choose_module_type(flow.pin.requested, recommended, flow.pin.module_version)


def install(flow: Flow, module_type: str) -> bool:
    """Run the cached installer with `-M module_type`; the flow remembers the type installed."""
    if flow.cc:
        flow.kit.run_installer(flow.root, flow.runner, flow.run_path, module_type,
                               timeout=flow.settings.install_timeout, cc=flow.cc)
    else:  # fakes that build nothing need not take cc
        flow.kit.run_installer(flow.root, flow.runner, flow.run_path, module_type,
                               timeout=flow.settings.install_timeout)
    flow.module_type = module_type
    return True


def refuse_gpuless_proprietary(flow: Flow) -> None:
    """Raise when the proprietary module just installed loaded but cannot drive the GPU.

    The kernel may accept the proprietary module and only log the NVRM requires-open line
    with `RmInitAdapter failed!` (nvidia-smi then finds no devices):
    docs/design/gpu-operator-contract.md 4.
    """
    if flow.install_reason is not None and flow.module_type == "proprietary" and \
            inst.kernel_says_requires_open(flow.kit.kernel_log(flow.runner)):
        raise InstallError("the proprietary nvidia module loaded but the GPU did not initialise "
                           "(NVRM: requires use of the NVIDIA open kernel modules)",
                           remedy=f"set {inst.MODULE_TYPE_VAR}=open")


def open_instead(flow: Flow, exc: AgentError, *,
                 load: Callable[[Flow], bool] | None = None) -> None:
    """A requires-open failure of proprietary: unload, install open, (load); else re-raise."""
    choice = flow.choice
    if choice is None or choice.module_type != "proprietary":
        raise exc
    # The kernel's NVRM line is the one signal: the installer never refuses -M proprietary.
    if not inst.kernel_says_requires_open(flow.kit.kernel_log(flow.runner)):
        raise exc
    if not choice.fallback_to_open:
        raise InstallError(
            "this GPU requires the NVIDIA open kernel modules and "
            f"{inst.MODULE_TYPE_VAR}={choice.requested} forbids falling back",
            remedy=f"set {inst.MODULE_TYPE_VAR}=open (or proprietary to allow the fallback)",
        ) from exc
    log.warning("module_type_fallback", installed="open", requested=choice.requested,
                reason="this GPU requires the NVIDIA open kernel modules",
                hint=f"set {inst.MODULE_TYPE_VAR}=open to skip the failed attempt, or "
                     "proprietary-strict to forbid this fallback")
    # A proprietary module that loaded without a GPU must go before open can install.
    flow.step("stale_unload", lambda: flow.kit.unload_stale(flow.root, flow.runner,
                                                             want_version=""))
    flow.step("installer", lambda: install(flow, "open"))
    if load is not None:  # the load step failed: load again, now open
        flow.step("load", lambda: load(flow))
