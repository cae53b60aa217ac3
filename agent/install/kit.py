"""The install flow's collaborators in one bundle, so tests hand in fakes instead of patching."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.errors import HostCommandMissing

if TYPE_CHECKING:  # the real modules load only in real_kit, so `grid-agent --help` stays cheap
    from agent.catalog import Release
    from agent.driver.snapshot import Snapshot
    from agent.host.root import HostRoot
    from agent.host.runner import HostRunner
    from agent.install.compiler import CompilerChoice
    from agent.install.nouveau import NouveauOutcome
    from agent.install.preflight import Preflight
    from agent.pci import PciDevice
    from agent.settings import Settings


class LockFn(Protocol):
    def __call__(self, root: HostRoot, *, wait: bool,
                 timeout: float | None = None) -> AbstractContextManager[None]: ...


class SnapshotFn(Protocol):
    def __call__(self, root: HostRoot, runner: HostRunner, *, smi: bool = True,
                 kernel: bool = False, handoff: bool = True,
                 timeout: float | None = None) -> Snapshot: ...


class BuildDepsFn(Protocol):
    def __call__(self, root: HostRoot, runner: HostRunner, kernel_release: str, *,
                 lock_wait: float) -> bool: ...


class UnloadFn(Protocol):
    def __call__(self, root: HostRoot, runner: HostRunner, *, want_version: str) -> bool: ...


class RecommendFn(Protocol):
    def __call__(self, root: HostRoot, runner: HostRunner, run_path: str, *,
                 timeout: float) -> str | None: ...


class ForeignFn(Protocol):
    def __call__(self, root: HostRoot, runner: HostRunner, pin_version: str, *,
                 lock_wait: float) -> bool: ...


def no_foreign_driver(root: HostRoot, runner: HostRunner, pin_version: str, *,
                      lock_wait: float) -> bool:
    """The default: no other NVIDIA driver installation to remove (foreign.py)."""
    return False


class InstallerFn(Protocol):
    def __call__(self, root: HostRoot, runner: HostRunner, run_path: str, module_type: str, *,
                 timeout: float, cc: str | None = None) -> None: ...


class CompilerFn(Protocol):
    def __call__(self, root: HostRoot, runner: HostRunner, kernel_release: str, *,
                 lock_wait: float) -> CompilerChoice: ...


def keep_host_compiler(root: HostRoot, runner: HostRunner, kernel_release: str, *,
                       lock_wait: float) -> CompilerChoice:
    """The default: the host's compiler (fakes that build nothing need not say)."""
    from agent.install.compiler import CompilerChoice

    return CompilerChoice(None)


HostStep = Callable[["HostRoot", "HostRunner"], bool]  # an idempotent step: True if it changed


@dataclass(frozen=True)
class Kit:
    """Every side effect the pipeline, plan and uninstall use; mypy checks real_kit against it
    (docs/design/architecture.md)."""

    scan_pci: Callable[[], Sequence[PciDevice]]
    lock: LockFn
    snapshot: SnapshotFn
    resolve_release: Callable[[Settings], Release]
    module_version: Callable[[str], str]
    preflight: Callable[[Settings, HostRoot, HostRunner], Preflight]
    headers_present: Callable[[HostRoot, str], bool]
    ensure_installer: Callable[[Release, HostRoot, Settings], Path]  # agent-visible path
    ensure_build_deps: BuildDepsFn
    unload_stale: UnloadFn
    ensure_nouveau_disabled: Callable[[HostRoot, HostRunner], NouveauOutcome]
    recommended_type: RecommendFn
    run_installer: InstallerFn
    load_modules: HostStep
    kernel_log: Callable[[HostRunner], str]  # dmesg on the host
    ensure_persistenced: HostStep
    ensure_gridd_conf: Callable[[HostRoot], bool]
    ensure_gridd_running: HostStep
    publish: HostStep
    remove_marker: Callable[[HostRoot], bool]
    unpublish: HostStep
    ensure_compiler: CompilerFn = keep_host_compiler  # the kernel's own gcc-N (compiler.py)
    remove_foreign: ForeignFn = no_foreign_driver  # another NVIDIA driver removed (foreign.py)


def host_dmesg(runner: HostRunner) -> str:
    """The host's kernel log; empty when it cannot be read (only a hint, never fatal)."""
    try:
        result = runner.run(["dmesg"], check=False, timeout=30)
    except HostCommandMissing:
        return ""
    return result.stdout if result.ok else ""


def fetch_installer(release: Release, root: HostRoot, settings: Settings) -> Path:
    """download.ensure_installer with the settings' timeouts and attempts."""
    from agent.install.download import download_options, ensure_installer

    return ensure_installer(release, root, options=download_options(settings))


def real_kit() -> Kit:
    """The production bundle; imported here so `grid-agent --help` stays cheap."""
    from agent import handoff
    from agent.catalog import module_version, resolve_release
    from agent.driver.snapshot import take_snapshot
    from agent.host.lock import host_lock
    from agent.host.udev import scan_pci
    from agent.install import (
        foreign,
        installer,
        licensing,
        modules,
        nouveau,
        packages,
        preflight,
    )

    return Kit(
        scan_pci=scan_pci, lock=host_lock, snapshot=take_snapshot,
        resolve_release=resolve_release, module_version=module_version,
        preflight=preflight.run_preflight, headers_present=preflight.headers_present,
        ensure_installer=fetch_installer, ensure_build_deps=packages.ensure_build_deps,
        unload_stale=modules.unload_stale,
        ensure_nouveau_disabled=nouveau.ensure_nouveau_disabled,
        recommended_type=installer.recommended_module_type,
        run_installer=installer.run_installer, load_modules=modules.load_modules,
        kernel_log=host_dmesg, ensure_persistenced=modules.ensure_persistenced,
        ensure_gridd_conf=licensing.ensure_gridd_conf,
        ensure_gridd_running=licensing.ensure_gridd_running,
        publish=handoff.publish, remove_marker=handoff.remove_marker,
        unpublish=handoff.unpublish, ensure_compiler=packages.ensure_compiler,
        remove_foreign=foreign.remove_foreign_driver,
    )
