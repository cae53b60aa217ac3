"""A fake node for the install flow's unit tests: a Kit whose steps act on plain attributes."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from types import SimpleNamespace

from agent.catalog import Release
from agent.driver.nvsmi import GpuReport, NvsmiReport, SmiOutcome
from agent.driver.record import read_record
from agent.driver.snapshot import Snapshot
from agent.driver.state import ABSENT, LIVE, Module, ModuleState
from agent.errors import HostCommandError, PreflightError
from agent.handoff import Handoff
from agent.host.root import HostRoot
from agent.install import installer as inst
from agent.install.kit import Kit
from tests.fakes.pci import H100, TARGET
from tests.fakes.settings import settings

VERSION = "580.105.08-grid-azure"
# The fake cached installer's bytes and their digest: the uninstaller runs a verified copy.
RUN_BYTES = b"#!/bin/sh\n"
RUN_SHA256 = hashlib.sha256(RUN_BYTES).hexdigest()
RUN_PATH = f"/var/cache/grid-agent/{RUN_SHA256}/NVIDIA-Linux-x86_64-{VERSION}.run"
GPU = GpuReport("00000000:00:02.0", "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "2BB510DE",
                "21871414", "VGPU", "N/A", "N/A", "Licensed (Expiry: 2026-7-7 16:1:44 GMT)",
                "NVIDIA RTX Virtual Workstation", "Enabled")
NVRM = ("NVRM: The NVIDIA GPU 0000:00:02.0 (PCI ID: 10de:2bb5) installed in this system "
        "requires use of the NVIDIA open kernel modules.")


def release(version: str = VERSION, sha256: str | None = RUN_SHA256,
            module_type: str = "proprietary", url: str | None = None) -> Release:
    url = url or f"https://example.invalid/NVIDIA-Linux-x86_64-{version}.run"
    return Release(version, url, sha256, None, module_type)


NOTHING_LOADED = ModuleState(Module("nvidia"), Module("nouveau"))


def loaded(version: str, module_type: str | None, refcnt: int = 0,
           holders: tuple[str, ...] = (), *, nouveau: bool = False) -> ModuleState:
    """The real ModuleState of a node with this nvidia module live."""
    return ModuleState(Module("nvidia", LIVE, refcnt, holders, version),
                       Module("nouveau", LIVE if nouveau else ABSENT), version, module_type)


@dataclass
class FakeNode:
    """The node's state as attributes; `calls` lists every kit call in order."""

    root: HostRoot
    devices: list = field(default_factory=lambda: [TARGET])
    release: Release = field(default_factory=release)
    kernel: str = "6.8.0-1020-azure"
    state: ModuleState = NOTHING_LOADED
    marker: bool = False
    mounted: bool = False
    requires_open: bool = False
    recommended: str = "open"
    smi_exit: int = 0
    preflight_error: str | None = None
    reboot_for_nouveau: bool = False
    installed_type: str | None = None
    calls: list = field(default_factory=list)
    lock_args: list = field(default_factory=list)

    def names(self):
        return [c[0] for c in self.calls]

    def reboot(self, autoload=True):
        self.marker = self.mounted = False
        loaded = autoload and self.installed_type is not None
        self.state = self._loaded_state() if loaded else NOTHING_LOADED

    def _loaded_state(self):
        return loaded(self.release.version.split("-")[0], self.installed_type)

    def _call(self, name, *args):
        self.calls.append((name, *args))

    @contextlib.contextmanager
    def lock(self, root, *, wait, timeout=None):
        self.lock_args.append((wait, timeout))
        yield

    def preflight(self, settings, root, runner):
        self._call("preflight")
        if self.preflight_error:
            raise PreflightError(self.preflight_error)
        return SimpleNamespace(kernel_release=self.kernel, os_id="ubuntu", os_version="24.04")

    def ensure_installer(self, release, root, settings):
        self._call("ensure_installer")
        path = root.path(f"/var/cache/grid-agent/{release.sha256}/{release.filename}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(RUN_BYTES)
        return path

    def run_installer(self, root, runner, run_path, module_type, *, timeout):
        self._call("run_installer", run_path, module_type)
        ko = root.path(f"/lib/modules/{self.kernel}/kernel/drivers/video/nvidia.ko")
        ko.parent.mkdir(parents=True, exist_ok=True)
        ko.write_text("elf")
        self.installed_type = module_type

    def unload_stale(self, root, runner, *, want_version):
        self._call("unload_stale")
        if not self.state.loaded or self.state.version == want_version:
            return False
        self.state = NOTHING_LOADED
        return True

    def load_modules(self, root, runner):
        self._call("load_modules")
        if self.state.loaded:
            return False
        if self.requires_open and self.installed_type == "proprietary":
            raise HostCommandError(["modprobe", "-a", "nvidia"], 1, "", "No such device")
        self.state = self._loaded_state()
        return True

    def snapshot(self, root, runner, *, smi=True, kernel=False, handoff=True, timeout=None):
        """The node's attributes as the real Snapshot type, so the real checks judge it."""
        self._call("snapshot", *(["kernel"] if kernel else []))
        s = self.state
        seen = Handoff(self.marker, self.marker, self.mounted,
                       "hand-off intact" if self.marker and self.mounted
                       else "marker or mount missing") if handoff else None
        outcome = None
        if smi:
            code = 127 if not s.loaded and not self.smi_exit else self.smi_exit
            report = NvsmiReport(s.version, "13.0", (GPU,)) if s.loaded else None
            outcome = SmiOutcome(code, "" if code == 0 else "NVIDIA-SMI has failed", report,
                                 None if code == 0 else f"nvidia-smi exited {code}")
        return Snapshot(s, read_record(root), seen, outcome, None,
                        self.kernel if kernel else None)

    def publish(self, root, runner):
        self._call("publish")
        changed = not (self.marker and self.mounted)
        self.marker = self.mounted = True
        return changed

    def remove_marker(self, root):
        self._call("remove_marker")
        was, self.marker = self.marker, False
        return was

    def unpublish(self, root, runner):
        self._call("unpublish")
        was = self.marker or self.mounted
        self.marker = self.mounted = False
        return was

    def kit(self) -> Kit:
        def simple(name, value):
            def fn(*args, **kwargs):
                self._call(name)
                return value() if callable(value) else value
            return fn

        return Kit(
            scan_pci=lambda: list(self.devices), lock=self.lock,
            snapshot=self.snapshot,
            resolve_release=lambda s: self.release,
            module_version=lambda v: v.split("-")[0],
            preflight=self.preflight, headers_present=lambda root, k: True,
            ensure_installer=self.ensure_installer,
            ensure_build_deps=simple("ensure_build_deps", False),
            unload_stale=self.unload_stale,
            ensure_nouveau_disabled=simple("ensure_nouveau_disabled", lambda: SimpleNamespace(
                changed=False, reboot_required=self.reboot_for_nouveau,
                reason="nouveau is loaded and in use")),
            recommended_type=simple("recommended_type", lambda: self.recommended),
            run_installer=self.run_installer, load_modules=self.load_modules,
            kernel_log=simple("kernel_log", lambda: NVRM if self.requires_open else ""),
            ensure_persistenced=simple("ensure_persistenced", False),
            ensure_gridd_conf=simple("ensure_gridd_conf", False),
            ensure_gridd_running=simple("ensure_gridd_running", False),
            publish=self.publish, remove_marker=self.remove_marker,
            unpublish=self.unpublish,
        )


__all__ = ["H100", "NOTHING_LOADED", "NVRM", "RUN_PATH", "TARGET", "FakeNode", "inst", "loaded",
           "release", "settings"]
