"""Run NVIDIA's `.run` installer on the host, choosing the kernel module type."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import structlog

from agent.errors import HostCommandError, InstallError
from agent.host.paths import INSTALLER_LOG
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install.compiler import installer_env
from agent.install.staging import verified_copy

log = structlog.get_logger(__name__)

MAX_LOG_BYTES = 64 << 20  # an installer log is ~100 KiB; never read a runaway one whole
MODULE_TYPE_VAR = "GRID_AGENT_KERNEL_MODULE_TYPE"
# The only signal of a GPU that the proprietary module cannot drive: the kernel's NVRM line
# (modprobe fails, or the module loads and finds no device). The real installer never says
# so in an ERROR line: forced with -M proprietary it installs (nvidia-installer 580.105.08,
# kernel.c, valid_kernel_module_types / override_kernel_module_build_directory).
# gcc's diagnostic, `file.c:223:9: error: ...` or `fatal error:` (make's own lines differ).
_GCC_ERROR = re.compile(r"^(\S+?\.[ch])((?::\d+)*: (?:fatal )?error: .+)$")
MAX_CAUSE = 300
_NVRM_REQUIRES_OPEN = re.compile(r"NVRM:.*requires use of the NVIDIA open kernel modules")
_TYPES = ("open", "proprietary")
# The GPU Operator's fallback when the installer cannot recommend (gpu-driver-container,
# `_resolve_kernel_type_from_driver_branch`): branches before 560 proprietary, else open.
OPEN_FROM_BRANCH = 560


@dataclass(frozen=True)
class ModuleChoice:
    """The module type to install first, and whether a requires-open failure may switch to open."""

    module_type: str
    fallback_to_open: bool
    requested: str  # the setting as resolved (never empty): auto, open, proprietary...


def requested_type(setting: str, catalog_type: str) -> str:
    """An empty setting means the catalog's type for the release, else `auto`."""
    return setting or catalog_type or "auto"


def branch_module_type(module_version: str) -> str:
    """The type for a driver branch when the installer cannot say: open from 560 on."""
    try:
        branch = int(module_version.split(".", 1)[0])
    except ValueError:
        raise InstallError(f"cannot tell the driver branch of {module_version!r}") from None
    return "open" if branch >= OPEN_FROM_BRANCH else "proprietary"


def choose_module_type(requested: str, recommended: str | None = None,
                       module_version: str = "") -> ModuleChoice:
    """Map the setting to the first type to try.

    `auto` takes the installer's recommendation, else the branch rule (open from 560);
    only an explicit `proprietary` may fall back to open after the kernel refuses it.
    """
    if requested == "auto":
        if recommended in _TYPES:
            return ModuleChoice(recommended, False, requested)
        chosen = branch_module_type(module_version)
        log.info("module_type_from_branch", module_type=chosen, module_version=module_version,
                 reason="the installer gave no recommendation")
        return ModuleChoice(chosen, False, requested)
    if requested == "proprietary-strict":
        return ModuleChoice("proprietary", False, requested)
    if requested not in _TYPES:
        raise InstallError(f"unknown kernel module type {requested!r} for {MODULE_TYPE_VAR}")
    return ModuleChoice(requested, requested == "proprietary", requested)


def installer_argv(run_path: str, module_type: str, *, dkms: bool,
                   log_file: str = INSTALLER_LOG) -> list[str]:
    """`sh <run> --silent --no-drm -M <type> [--dkms] --log-file-name=<ours>`."""
    argv = ["sh", run_path, "--silent", "--no-drm", "-M", module_type]
    if dkms:
        argv.append("--dkms")
    argv.append(f"--log-file-name={log_file}")
    return argv


def parse_recommendation(stdout: str) -> str | None:
    """The installer prints `open` or `proprietary` on a line of its own, after the
    makeself wrapper's "Verifying archive integrity" and "Uncompressing" lines."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip() in _TYPES]
    return lines[-1] if lines else None


def recommended_module_type(root: HostRoot, runner: HostRunner, run_path: str, *,
                            timeout: float) -> str | None:
    """Ask the installer, as the GPU Operator's `auto` does; None when it cannot answer.

    `sh <.run> --print-recommended-kernel-module-type` extracts the archive, scans the
    PCI bus and exits 0 with the answer; installers before 555 do not know the flag and
    exit 1, as does one that cannot determine a type: then the branch rule decides.
    """
    try:
        with verified_copy(root, run_path) as private:
            result = runner.run(["sh", private, "--print-recommended-kernel-module-type"],
                                timeout=timeout)
    except HostCommandError as exc:
        log.warning("module_type_unrecommended", reason=exc.message,
                    then="the driver branch decides (open from 560)")
        return None
    return parse_recommendation(result.stdout)


def error_lines(log_text: str, count: int = 3) -> list[str]:
    """The installer's last `ERROR:` lines, then the compiler's first error when a build
    failed: the ERROR line only says "Building kernel modules", the cause is in the make
    output above it (e.g. `nv-pci.c:223:9: error: too few arguments to function
    'pci_resize_resource'`, NVIDIA's open 535 against a newer 6.1 stable kernel)."""
    lines = log_text.splitlines()
    found = [ln.strip() for ln in lines if ln.strip().startswith("ERROR:")][-count:]
    if found:
        cause = next((m for ln in lines if (m := _compile_error(ln))), None)
        if cause:
            found.append(cause)
    return found


def _compile_error(line: str) -> str | None:
    """gcc's `path:line:col: error: ...` as `file:line:col: error: ...` (no build dir)."""
    found = _GCC_ERROR.match(line.strip())
    if not found:
        return None
    return f"{PurePosixPath(found.group(1)).name}{found.group(2)}"[:MAX_CAUSE]


def kernel_says_requires_open(kernel_log: str) -> bool:
    """The NVRM line the proprietary module prints on a GPU it cannot drive."""
    return bool(_NVRM_REQUIRES_OPEN.search(kernel_log))


class InstallerFailed(InstallError):
    """The `.run` exited non-zero; carries its last ERROR lines."""

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message, remedy=f"see {INSTALLER_LOG} on the node")
        self.errors = errors


def set_aside_old_log(root: HostRoot, host_log: str = INSTALLER_LOG) -> None:
    """`<log>.old`: so the ERROR lines we surface are this run's, not a previous attempt's."""
    root.rename(host_log, PurePosixPath(host_log).name + ".old")


def private_log(private_run: str, host_log: str) -> str:
    """Where a run's log goes while it runs: beside the private copy (root-only)."""
    return f"{PurePosixPath(private_run).parent}/{PurePosixPath(host_log).name}"


def publish_log(root: HostRoot, private: str, host_log: str = INSTALLER_LOG) -> None:
    """Move the installer's log to where people look for it, by rename (no link followed)."""
    data = root.read_nofollow(private, limit=MAX_LOG_BYTES)
    if data is None:
        return  # the installer wrote none (it failed before opening it)
    try:
        root.write_file(host_log, data, mode=0o644)
    except (OSError, InstallError) as exc:  # the log is a courtesy; the result stands
        log.warning("installer_log_unpublished", path=host_log, error=str(exc))


def run_installer(root: HostRoot, runner: HostRunner, run_path: str, module_type: str, *,
                  timeout: float, cc: str | None = None) -> None:
    """Run a verified private copy of the cached `.run`; InstallerFailed with its ERROR lines.

    `cc`: the kernel's own compiler when the host's default differs (compiler.py)."""
    set_aside_old_log(root)
    try:
        with verified_copy(root, run_path) as private:
            # The installer (root) opens its log with fopen("w"), following links: it
            # writes it in the private directory, and the log is published by rename
            # afterwards, so a link planted in /var/log (group syslog on Ubuntu) cannot
            # steer a root write (issue 12).
            own_log = private_log(private, INSTALLER_LOG)
            argv = installer_argv(private, module_type, dkms=root.which("dkms") is not None,
                                  log_file=own_log)
            log.info("installer_started", argv=argv, module_type=module_type, cc=cc,
                     cached=run_path, log=INSTALLER_LOG)
            try:
                result = runner.run(argv, timeout=timeout, env=installer_env(cc))
            finally:
                publish_log(root, own_log)
    except HostCommandError as exc:
        text = (root.read_nofollow(INSTALLER_LOG, limit=MAX_LOG_BYTES) or b"").decode(
            errors="replace")
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
