"""Run NVIDIA's `.run` installer on the host, choosing the kernel module type."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import structlog

from agent.errors import HostCommandError, InstallError
from agent.host.paths import INSTALLER_LOG
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

log = structlog.get_logger(__name__)

MODULE_TYPE_VAR = "GRID_AGENT_KERNEL_MODULE_TYPE"
# Both signals of a GPU that the proprietary module cannot drive (formats.md, the
# installer's ERROR naming the open modules, or the kernel's NVRM line after a load).
_REQUIRES_OPEN = re.compile(r"requires use of the NVIDIA open kernel modules|open kernel modules?",
                            re.IGNORECASE)
_NVRM_REQUIRES_OPEN = re.compile(r"NVRM:.*requires use of the NVIDIA open kernel modules")
_TYPES = ("open", "proprietary")


@dataclass(frozen=True)
class ModuleChoice:
    """The module type to install first, and whether a requires-open failure may switch to open."""

    module_type: str
    fallback_to_open: bool
    requested: str  # the setting as resolved (never empty): auto, open, proprietary...


def requested_type(setting: str, catalog_type: str) -> str:
    """An empty setting means the catalog's type for the release."""
    return setting or catalog_type


def choose_module_type(requested: str, recommended: str | None = None) -> ModuleChoice:
    """Map the setting to the first type to try; `auto` uses the installer's recommendation."""
    if requested == "auto":
        if recommended not in _TYPES:
            raise InstallError(f"the installer recommended no usable module type ({recommended!r})")
        return ModuleChoice(recommended, False, requested)
    if requested == "proprietary-strict":
        return ModuleChoice("proprietary", False, requested)
    if requested not in _TYPES:
        raise InstallError(f"unknown kernel module type {requested!r} for {MODULE_TYPE_VAR}")
    return ModuleChoice(requested, requested == "proprietary", requested)


def installer_argv(run_path: str, module_type: str, *, dkms: bool) -> list[str]:
    """`sh <run> --silent --no-drm -M <type> [--dkms] --log-file-name=<ours>`."""
    argv = ["sh", run_path, "--silent", "--no-drm", "-M", module_type]
    if dkms:
        argv.append("--dkms")
    argv.append(f"--log-file-name={INSTALLER_LOG}")
    return argv


def recommended_module_type(runner: HostRunner, run_path: str, *, timeout: float) -> str | None:
    """Ask the installer, as the operator's `auto` does (`--print-recommended-...`)."""
    try:
        result = runner.run(["sh", run_path, "--print-recommended-kernel-module-type"],
                            timeout=timeout)
    except HostCommandError as exc:
        raise InstallError(f"could not ask the installer for a module type: {exc.message}") from exc
    # The makeself wrapper prints its own lines first; the answer is the last word.
    words = [w for w in result.stdout.split() if w in _TYPES]
    return words[-1] if words else None


def error_lines(log_text: str, count: int = 3) -> list[str]:
    """The installer's last `ERROR:` lines, the only part of its log worth a person's time."""
    found = [ln.strip() for ln in log_text.splitlines() if ln.strip().startswith("ERROR:")]
    return found[-count:]


def says_requires_open(text: str) -> bool:
    """An installer ERROR line naming the open kernel modules."""
    return any(_REQUIRES_OPEN.search(ln) for ln in error_lines(text, 50))


def kernel_says_requires_open(kernel_log: str) -> bool:
    """The NVRM line the proprietary module prints on a GPU it cannot drive."""
    return bool(_NVRM_REQUIRES_OPEN.search(kernel_log))


class InstallerFailed(InstallError):
    """The `.run` exited non-zero; carries its ERROR lines (a caller looks for requires-open)."""

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message, remedy=f"see {INSTALLER_LOG} on the node")
        self.errors = errors

    @property
    def requires_open(self) -> bool:
        return says_requires_open("\n".join(self.errors))


def _set_aside_old_log(root: HostRoot) -> None:
    # So the ERROR lines we surface are this run's, not a previous attempt's.
    path = root.path(INSTALLER_LOG)
    if path.exists():
        path.replace(path.with_name(path.name + ".old"))


def run_installer(root: HostRoot, runner: HostRunner, run_path: str, module_type: str, *,
                  timeout: float) -> None:
    """Run the `.run` by its host path; raise InstallerFailed with its last ERROR lines."""
    argv = installer_argv(run_path, module_type, dkms=root.which("dkms") is not None)
    _set_aside_old_log(root)
    log.info("installer_started", argv=argv, module_type=module_type)
    try:
        result = runner.run(argv, timeout=timeout)
    except HostCommandError as exc:
        text = root.read_text(INSTALLER_LOG, "") or ""
        errors = error_lines(text) or error_lines(exc.stdout + "\n" + exc.stderr)
        why = " | ".join(errors) or exc.message
        raise InstallerFailed(f"driver installer failed (-M {module_type}): {why}",
                              errors) from exc
    log.info("installer_finished", module_type=module_type, seconds=round(result.seconds, 1))


def host_path_of(root: HostRoot, agent_path: os.PathLike[str] | str) -> str:
    """Where the host sees a file the agent sees under the root (the runner runs in the host)."""
    try:
        return root.host_path(agent_path)
    except ValueError as exc:
        raise InstallError(str(exc)) from None
