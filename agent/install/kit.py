"""The install flow's collaborators in one bundle, so tests hand in fakes instead of patching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from agent.errors import HostCommandMissing

_KEEP_HOST_CC = SimpleNamespace(cc=None, changed=False)


@dataclass(frozen=True)
class Kit:
    """Every side effect the pipeline, plan and uninstall use, (docs/design/architecture.md)."""

    scan_pci: Callable[[], Any]  # -> list[PciDevice]
    lock: Callable[..., Any]  # host_lock(root, *, wait, timeout) context manager
    module_state: Callable[[Any], Any]  # read_module_state(root) -> ModuleState
    module_refcnt: Callable[[Any, str], int | None]
    kernel_release: Callable[[Any], str]  # host_kernel_release(runner)
    resolve_release: Callable[[Any], Any]  # resolve_release(settings) -> Release
    module_version: Callable[[str], str]
    preflight: Callable[[Any, Any, Any], Any]  # run_preflight(settings, root, runner)
    headers_present: Callable[[Any, str], bool]
    ensure_installer: Callable[..., Any]  # (release, root, settings) -> agent-visible Path
    ensure_build_deps: Callable[..., bool]  # (root, runner, kernel_release, *, lock_wait)
    unload_stale: Callable[..., bool]  # (root, runner, *, want_version)
    ensure_nouveau_disabled: Callable[[Any, Any], Any]  # -> NouveauOutcome
    recommended_type: Callable[..., str | None]  # (root, runner, run_path, *, timeout)
    run_installer: Callable[..., None]  # (root, runner, run_path, module_type, *, timeout)
    load_modules: Callable[[Any, Any], bool]
    kernel_log: Callable[[Any], str]  # dmesg on the host
    ensure_persistenced: Callable[[Any, Any], bool]
    ensure_gridd_conf: Callable[[Any], bool]
    ensure_gridd_running: Callable[[Any, Any], bool]
    verify: Callable[..., Any]  # (root, runner, *, module_version, module_type) -> VerifyResult
    publish: Callable[[Any, Any], bool]
    remove_marker: Callable[[Any], bool]
    unpublish: Callable[[Any, Any], bool]
    # (root, runner, kernel_release, *, lock_wait) -> CompilerChoice; the default keeps
    # the host's compiler (fakes that build nothing need not say).
    ensure_compiler: Callable[..., Any] = field(default=lambda *a, **k: _KEEP_HOST_CC)
    # (root, runner, pin_version, *, lock_wait) -> bool: another NVIDIA driver
    # removed (foreign.py); the default finds none.
    remove_foreign: Callable[..., bool] = field(default=lambda *a, **k: False)


def host_dmesg(runner: Any) -> str:
    """The host's kernel log; empty when it cannot be read (only a hint, never fatal)."""
    try:
        result = runner.run(["dmesg"], check=False, timeout=30)
    except HostCommandMissing:
        return ""
    return result.stdout if result.ok else ""


def fetch_installer(release: Any, root: Any, settings: Any) -> Any:
    """download.ensure_installer with the settings' timeouts and attempts."""
    from agent.install.download import download_options, ensure_installer

    return ensure_installer(release, root, options=download_options(settings))


def real_kit() -> Kit:
    """The production bundle; imported here so `grid-agent --help` stays cheap."""
    from agent import handoff
    from agent.catalog import module_version, resolve_release
    from agent.driver.state import module_refcnt, read_module_state
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
    from agent.install.verify import verify_driver

    return Kit(
        scan_pci=scan_pci, lock=host_lock, module_state=read_module_state,
        module_refcnt=module_refcnt, kernel_release=preflight.host_kernel_release,
        resolve_release=resolve_release, module_version=module_version,
        preflight=preflight.run_preflight, headers_present=preflight.headers_present,
        ensure_installer=fetch_installer, ensure_build_deps=packages.ensure_build_deps,
        unload_stale=modules.unload_stale,
        ensure_nouveau_disabled=nouveau.ensure_nouveau_disabled,
        recommended_type=installer.recommended_module_type,
        run_installer=installer.run_installer, load_modules=modules.load_modules,
        kernel_log=host_dmesg, ensure_persistenced=modules.ensure_persistenced,
        ensure_gridd_conf=licensing.ensure_gridd_conf,
        ensure_gridd_running=licensing.ensure_gridd_running, verify=verify_driver,
        publish=handoff.publish, remove_marker=handoff.remove_marker,
        unpublish=handoff.unpublish, ensure_compiler=packages.ensure_compiler,
        remove_foreign=foreign.remove_foreign_driver,
    )
