"""The install flow: gate, lock, fast path, then each idempotent step up to the hand-off."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent.driver.record import InstallRecord, read_record, write_record
from agent.errors import (
    AgentError,
    DownloadError,
    HostCommandMissing,
    InstallError,
    PreflightError,
    VerifyError,
)
from agent.host.paths import CACHE_DIR
from agent.host.procs import refuse_running_installer
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install import inplace, prebuild, upgrade
from agent.install import installer as inst
from agent.install.kit import Kit
from agent.install.modules import DriverInUse, in_use_reasons
from agent.install.pin import Pin, record_matches, resolve_pin
from agent.pci import detect
from agent.settings import Settings

log = structlog.get_logger(__name__)

Progress = Callable[[str, str, bool | None], None]  # (started|finished|failed, step, changed)


@dataclass(frozen=True)
class Outcome:
    """What `install` did: not_target, fast_path or installed (failures raise)."""

    outcome: str
    verify: Any = None  # VerifyResult when the driver was verified
    reason: str = ""


@dataclass
class Flow:
    """One install run's state; steps fill in what later steps need."""

    settings: Settings
    root: HostRoot
    runner: HostRunner
    kit: Kit
    pin: Pin
    progress: Progress | None = None
    kernel_release: str = ""
    run_path: str = ""  # the .run by its host path
    module_type: str = ""
    cc: str | None = None  # the kernel's own gcc-N when the host's default differs
    install_reason: str | None = None  # why the installer must run; None: built already
    fast: bool = False
    verified: Any = None
    started: float = field(default_factory=time.monotonic)

    def step(self, name: str, action: Callable[[], bool]) -> bool:
        """Run one step between step_started/step_finished events (crash tests key on them)."""
        log.info("step_started", name=name)
        self._tell("started", name, None)
        begun = time.monotonic()
        try:
            try:
                changed = bool(action())
            except OSError as err:  # a host path the step could not use: its own exit code
                raise step_file_error(name, err) from err
            except HostCommandMissing as exc:  # a host command not installed: the same
                raise exc.for_step(name, _STEP_ERRORS.get(name, InstallError)) from exc
        except AgentError as exc:
            log.error("step_failed", name=name, error=exc.line())
            self._tell("failed", name, None)
            raise
        log.info("step_finished", name=name, changed=changed,
                 seconds=round(time.monotonic() - begun, 3))
        self._tell("finished", name, changed)
        return changed

    def _tell(self, phase: str, name: str, changed: bool | None) -> None:
        if self.progress is not None:
            self.progress(phase, name, changed)

    # -- fast path ---------------------------------------------------------------------

    def fast_path_refusal(self) -> str | None:
        """None when the loaded driver and the record match the pin (verification still due)."""
        state = self.kit.module_state(self.root)
        if not state.loaded:
            return "the nvidia module is not loaded"
        if state.version != self.pin.module_version:
            return f"loaded module is {state.version}, pin is {self.pin.module_version}"
        record = read_record(self.root)
        why = record_matches(record, self.pin)
        if why or record is None:
            return why
        if state.module_type is not None and state.module_type != record.module_type:
            return f"loaded {state.module_type} modules, recorded {record.module_type}"
        self.kernel_release = self.kit.kernel_release(self.runner)
        if record.kernel_release != self.kernel_release and not prebuild.built_for(
                self.root, self.pin, self.kernel_release):
            return f"kernel is {self.kernel_release}, driver was built for {record.kernel_release}"
        self.module_type = record.module_type
        return None

    def do_fast_path(self) -> bool:
        """Sets self.fast when the driver in place is this pin and verifies; changes nothing."""
        why = self.fast_path_refusal()
        if why is None:
            try:
                self.verified = self._verify()
            except VerifyError as exc:
                # The full path re-runs load, persistence and licensing, which may fix it.
                why = f"verification failed: {exc.message}"
        if why is not None:
            log.info("fast_path_declined", reason=why)
            return False
        log.info("fast_path_taken", version=self.pin.release.version)
        self.fast = True
        return False

    # -- the steps ---------------------------------------------------------------------

    def do_preflight(self) -> bool:
        found = self.kit.preflight(self.settings, self.root, self.runner)
        self.kernel_release = found.kernel_release
        self.install_reason = self.installed_on_disk()
        return False

    def do_download(self) -> bool:
        if self.install_reason is None:
            log.info("installer_not_needed", reason="this pin is built for this kernel")
            return False
        cache = self.root.path(CACHE_DIR)
        before = set(cache.rglob("*.run")) if cache.is_dir() else set()
        path = Path(self.kit.ensure_installer(self.pin.release, self.root, self.settings))
        self.run_path = inst.host_path_of(self.root, path)
        return path not in before

    def do_packages(self) -> bool:
        changed = self.kit.ensure_build_deps(self.root, self.runner, self.kernel_release,
                                             lock_wait=self.settings.dpkg_lock_wait)
        if self.install_reason is None:
            return changed  # nothing to build
        # With the headers in place: the kernel's own compiler (compiler.py).
        choice = self.kit.ensure_compiler(self.root, self.runner, self.kernel_release,
                                          lock_wait=self.settings.dpkg_lock_wait)
        self.cc = choice.cc
        return changed or choice.changed

    def do_stale_unload(self) -> bool:
        # A busy old driver with a reboot coordinator: stage before touching anything, so
        # the running driver keeps its hand-off until the reboot (upgrade.py).
        self._stage_if_busy()
        # From here on the driver may change: withdraw the hand-off first, so no operator
        # pod trusts a marker while verification of the new driver has not passed.
        withdrawn = self.kit.remove_marker(self.root)
        # Another NVIDIA driver installation (packages, DKMS): removed when unused, else
        # exit 6 naming it (foreign.py).
        foreign = self.kit.remove_foreign(self.root, self.runner, self.pin.module_version,
                                          lock_wait=self.settings.dpkg_lock_wait)
        # The installer cannot replace a loaded module, even one of the same version (a
        # module type change, a rebuild): then no loaded version is wanted ("").
        want = "" if self.install_reason else self.pin.module_version
        try:
            unloaded = self.kit.unload_stale(self.root, self.runner, want_version=want)
        except DriverInUse as exc:
            if not self.settings.reboot_sentinel or not self.run_path:
                raise  # today's exit 6: a person drains and reboots
            self._stage(exc.message)  # users came between the look above and the unload
        return withdrawn or foreign or unloaded

    def _stage_if_busy(self) -> None:
        if not self.settings.reboot_sentinel or not self.run_path or self.install_reason is None:
            return
        users = in_use_reasons(self.root)
        if users:
            self._stage(f"the loaded NVIDIA driver is in use ({'; '.join(users)}); it cannot "
                        f"be replaced by {self.pin.module_version} while running")

    def _stage(self, reason: str) -> None:
        sentinel = self.settings.reboot_sentinel
        upgrade.stage(self.root, self.runner, sentinel=sentinel, pin=self.pin,
                      run_path=self.run_path, reason=reason)
        raise upgrade.Staged(f"upgrade to {self.pin.release.version} staged: waiting for a "
                             f"reboot ({sentinel} written)")

    def do_nouveau(self) -> bool:
        outcome = self.kit.ensure_nouveau_disabled(self.root, self.runner)
        if outcome.reboot_required:
            raise InstallError(f"reboot required: {outcome.reason}",
                               remedy="reboot the node; the agent finishes after the reboot")
        return outcome.changed

    def installed_on_disk(self) -> str | None:
        """None when the record says this pin is already built for this kernel."""
        record = read_record(self.root)
        why = record_matches(record, self.pin)
        if why or record is None:
            return why
        if record.kernel_release != self.kernel_release and not prebuild.built_for(
                self.root, self.pin, self.kernel_release):
            return f"built for kernel {record.kernel_release}"
        modules = self.root.path(f"/lib/modules/{self.kernel_release}")
        if not any(modules.rglob("nvidia.ko*")):
            return f"no nvidia.ko under /lib/modules/{self.kernel_release}"
        self.module_type = record.module_type
        return None

    def choose(self) -> inst.ModuleChoice:
        recommended = None
        if self.pin.requested == "auto":
            recommended = self.kit.recommended_type(self.root, self.runner, self.run_path,
                                                    timeout=self.settings.install_timeout)
        return inst.choose_module_type(self.pin.requested, recommended, self.pin.module_version)

    def do_installer(self, module_type: str) -> bool:
        self.kit.run_installer(self.root, self.runner, self.run_path, module_type,
                               timeout=self.settings.install_timeout,
                               **({"cc": self.cc} if self.cc else {}))
        self.module_type = module_type
        return True

    def do_licensing(self) -> bool:
        conf = self.kit.ensure_gridd_conf(self.root)
        running = self.kit.ensure_gridd_running(self.root, self.runner)
        return conf or running

    def _verify(self) -> Any:
        return self.kit.verify(self.root, self.runner, module_version=self.pin.module_version,
                               module_type=self.module_type)

    def do_verify(self) -> bool:
        self.verified = self._verify()
        return False

    def record(self, outcome: str, exit_code: int) -> bool:
        write_record(self.root, InstallRecord(
            version=self.pin.release.version, module_version=self.pin.module_version,
            kernel_release=self.kernel_release, module_type=self.module_type or "",
            config_digest=self.pin.digest, outcome=outcome, exit_code=exit_code,
            duration_seconds=round(time.monotonic() - self.started, 3),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ))
        log.info("install_recorded", outcome=outcome, exit_code=exit_code)
        return True


# The error class (exit code) of each step, for failures the step did not classify itself.
_STEP_ERRORS: dict[str, type[AgentError]] = {
    "preflight": PreflightError, "download": DownloadError, "verify": VerifyError,
}


def step_file_error(step: str, err: OSError) -> AgentError:
    """An OSError in a step as the step's failure, naming the path (exit 1 is for bugs)."""
    where = err.filename if err.filename is not None else "a host path"
    kind = _STEP_ERRORS.get(step, InstallError)
    return kind(f"{step}: filesystem error at {where}: {err.strerror or err}",
                remedy="fix or remove that path on the node (a file where a directory "
                       "belongs, a full disk, permissions), then retry")


def _requires_open(flow: Flow, exc: AgentError) -> bool:
    # The kernel's NVRM line is the one signal: the installer never refuses -M proprietary.
    return inst.kernel_says_requires_open(flow.kit.kernel_log(flow.runner))


def _load(flow: Flow, module_type: str) -> bool:
    """Load the stack; a proprietary module that loads but cannot drive the GPU is a failure.

    The kernel may accept the proprietary module and only log the NVRM requires-open line
    with `RmInitAdapter failed!` (nvidia-smi then finds no devices):
    docs/design/gpu-operator-contract.md 4.
    """
    changed = flow.kit.load_modules(flow.root, flow.runner)
    if module_type == "proprietary" and inst.kernel_says_requires_open(
            flow.kit.kernel_log(flow.runner)):
        raise InstallError("the proprietary nvidia module loaded but the GPU did not initialise "
                           "(NVRM: requires use of the NVIDIA open kernel modules)",
                           remedy=f"set {inst.MODULE_TYPE_VAR}=open")
    return changed


def _install_and_load(flow: Flow) -> None:
    """Installer then load; a requires-open failure of proprietary retries once with open."""
    why = flow.install_reason
    if why is None:
        flow.step("installer", lambda: False)
        flow.step("load", lambda: flow.kit.load_modules(flow.root, flow.runner))
        return
    log.info("installer_needed", reason=why)
    choice = flow.choose()
    try:
        flow.step("installer", lambda: flow.do_installer(choice.module_type))
        flow.step("load", lambda: _load(flow, choice.module_type))
    except AgentError as exc:
        if choice.module_type != "proprietary" or not _requires_open(flow, exc):
            raise
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
        flow.step("installer", lambda: flow.do_installer("open"))
        flow.step("load", lambda: _load(flow, "open"))


def _full_path(flow: Flow) -> None:
    flow.step("preflight", flow.do_preflight)
    flow.step("download", flow.do_download)
    flow.step("packages", flow.do_packages)
    flow.step("stale_unload", flow.do_stale_unload)
    flow.step("nouveau", flow.do_nouveau)
    _install_and_load(flow)
    flow.step("persistence", lambda: flow.kit.ensure_persistenced(flow.root, flow.runner))
    flow.step("licensing", flow.do_licensing)
    flow.step("verify", flow.do_verify)


def _converge(flow: Flow) -> Outcome:
    flow.step("fast_path", flow.do_fast_path)
    if not flow.fast:
        _full_path(flow)
    else:  # gridd.conf or persistence changed: applied without touching the modules
        flow.step("in_place", lambda: inplace.apply(flow))
    # Only after verification passed (fast path or full): the operator may now trust it.
    flow.step("publish", lambda: flow.kit.publish(flow.root, flow.runner))
    outcome = "fast_path" if flow.fast else "installed"
    flow.step("record", lambda: flow.record(outcome, 0))
    upgrade.clear(flow.root, flow.pin.digest)  # a staged upgrade (if any) is done
    # Kernels installed but not running get this pin's modules now (never fatal).
    flow.step("prebuild", lambda: prebuild.after_install(flow))
    return Outcome(outcome, flow.verified)


def gate(settings: Settings, kit: Kit) -> str | None:
    """None on a target node, else why this node is left alone."""
    found = detect(kit.scan_pci(), settings.target_spec)
    if found.is_target_node:
        log.info("target_found", targets=[d.slot for d in found.targets])
        return None
    wanted = ",".join(str(i) for i in settings.target_ids)
    return f"no target PCI function ({wanted}); {len(found.nvidia)} other NVIDIA function(s)"


def install(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit, *,
            progress: Progress | None = None,
            on_failure: Callable[[AgentError], None] | None = None) -> Outcome:
    """Converge the node; raise the step's AgentError (recorded in state.json) on failure.

    `on_failure` (the CLI's termination message) runs after the record, before the lock
    is let go: whoever takes the lock next finds both written.
    """
    why = gate(settings, kit)
    if why is not None:
        log.info("not_a_target_node", reason=why, changed=False)
        return Outcome("not_target", reason=why)
    pin = resolve_pin(settings, kit)
    wait = settings.wait_lock
    with kit.lock(root, wait=wait, timeout=settings.install_timeout if wait else None):
        refuse_running_installer(root)
        flow = Flow(settings, root, runner, kit, pin, progress)
        try:
            return _converge(flow)
        except upgrade.Staged:
            pass  # the record still describes the driver in place; wait outside the lock
        except AgentError as exc:
            _record_failure(flow, exc)
            if on_failure is not None:
                on_failure(exc)
            raise
    info = upgrade.staged_info(root) or {}
    upgrade.Waiter(root, interval=settings.watch_interval).wait(info)
    return install(settings, root, runner, kit, progress=progress)  # drained: go on now


def _record_failure(flow: Flow, exc: AgentError) -> None:
    # The marker must not outlive a failed verification; the record must not claim success.
    if isinstance(exc, VerifyError):
        flow.kit.remove_marker(flow.root)
    try:
        flow.record("failed", exc.exit_code)
    except OSError as err:
        log.warning("install_record_unwritable", error=str(err))
