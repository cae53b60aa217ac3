"""A fake node for the install flow's unit tests: a Kit whose steps act on plain attributes."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from agent.errors import HostCommandError, PreflightError, VerifyError
from agent.host.root import HostRoot
from agent.install import installer as inst
from agent.install.kit import Kit
from agent.pci import PciDevice
from agent.redact import redact_url
from agent.settings import build_settings

TARGET = PciDevice("0000:00:02.0", 0x10DE, 0x2BB5, 0x1414, 0x2187, 0x030200, None)
H100 = PciDevice("0000:00:03.0", 0x10DE, 0x2330, 0x10DE, 0x16C1, 0x030200, None)
VERSION = "580.105.08-grid-azure"
# The fake cached installer's bytes and their digest: the uninstaller runs a verified copy.
RUN_BYTES = b"#!/bin/sh\n"
RUN_SHA256 = hashlib.sha256(RUN_BYTES).hexdigest()
RUN_PATH = f"/var/cache/grid-agent/{RUN_SHA256}/NVIDIA-Linux-x86_64-{VERSION}.run"
NVRM = ("NVRM: The NVIDIA GPU 0000:00:02.0 (PCI ID: 10de:2bb5) installed in this system "
        "requires use of the NVIDIA open kernel modules.")


@dataclass(frozen=True)
class Release:
    version: str = VERSION
    url: str = "https://example.invalid/d.run"
    sha256: str | None = RUN_SHA256
    size: int | None = None
    module_type: str = "proprietary"

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    @property
    def filename(self) -> str:
        return f"NVIDIA-Linux-x86_64-{self.version}.run"


@dataclass(frozen=True)
class State:
    loaded: bool = False
    version: str | None = None
    module_type: str | None = None
    refcnt: int | None = None
    holders: tuple[str, ...] = ()
    nouveau_loaded: bool = False


def settings(**env):
    base = {"GRID_AGENT_HOST_ROOT": "/nonexistent"}
    base.update({f"GRID_AGENT_{k.upper()}": v for k, v in env.items()})
    return build_settings({}, base)


@dataclass
class FakeNode:
    """The node's state as attributes; `calls` lists every kit call in order."""

    root: HostRoot
    devices: list = field(default_factory=lambda: [TARGET])
    release: Release = field(default_factory=Release)
    kernel: str = "6.8.0-1020-azure"
    state: State = field(default_factory=State)
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
        self.state = self._loaded_state() if loaded else State()

    def _loaded_state(self):
        return State(True, self.release.version.split("-")[0], self.installed_type, 0)

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
        self.state = State()
        return True

    def load_modules(self, root, runner):
        self._call("load_modules")
        if self.state.loaded:
            return False
        if self.requires_open and self.installed_type == "proprietary":
            raise HostCommandError(["modprobe", "-a", "nvidia"], 1, "", "No such device")
        self.state = self._loaded_state()
        return True

    def verify(self, root, runner, *, module_version, module_type):
        self._call("verify", module_version, module_type)
        if not self.state.loaded or self.state.version != module_version:
            raise VerifyError("the nvidia kernel module is not loaded")
        if self.smi_exit:
            raise VerifyError(f"nvidia-smi exited {self.smi_exit}")
        gpu = SimpleNamespace(pci_bus_id="00000000:00:02.0", product_name="NVIDIA RTX Pro 6000 "
                              "Blackwell DC-4-96Q", virtualization_mode="VGPU",
                              license_status="Licensed (Expiry: 2026-7-7 16:1:44 GMT)",
                              mig_current="N/A")
        report = SimpleNamespace(driver_version=module_version, gpus=[gpu])
        return SimpleNamespace(module_version=module_version, module_type=module_type,
                               report=report, summary=lambda: f"driver {module_version}")

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
            module_state=lambda root: self.state, module_refcnt=lambda root, name: 0,
            kernel_release=simple("kernel_release", lambda: self.kernel),
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
            verify=self.verify, publish=self.publish, remove_marker=self.remove_marker,
            unpublish=self.unpublish,
        )


def with_state(node: FakeNode, **changes) -> None:
    node.state = replace(node.state, **changes)


__all__ = ["H100", "NVRM", "RUN_PATH", "TARGET", "FakeNode", "Release", "State", "inst", "settings",
           "with_state"]
