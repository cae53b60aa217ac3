"""Build the pinned driver's kernel modules for kernels installed but not yet running.

After an unattended kernel update the next boot would otherwise rebuild the driver
(minutes without a GPU). nvidia-installer 580.105.08 supports this directly
(option_table.h, install-from-cwd.c, kernel.c of NVIDIA/nvidia-installer):

- `--kernel-modules-only` (`-K`; `--kernel-module-only` is its alias) installs only the
  kernel modules and does not uninstall the existing driver; it needs an installed
  driver of the same version, and refuses a file that is already part of this
  installation ("already exists as part of this driver installation"), so a kernel
  whose modules are on disk is never rebuilt (and a crashed attempt's files go first);
- `--kernel-name=<release>` (`-k`) builds for that release and implies
  `--no-precompiled-interface`; for a non-running kernel the installer skips its test
  load, the "is an NVIDIA module loaded" and the X checks: the running driver is left
  alone; source and install paths default to `/lib/modules/<release>/{build,kernel/
  drivers/video}`, `--kernel-source-path` names the headers when `build` is missing;
- `--no-kernel-module-source`: the sources are installed already (by the main install).

The module type (`-M`) and `--no-drm` are the current install's. A DKMS-registered
driver is built with `dkms install` instead (DKMS owns those modules). Results go to
state.json `prebuilds` {release: {outcome: built|failed, finished_at, error, ...}};
a failure is logged and recorded, never fatal.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent.driver.record import InstallRecord, read_prebuilds, read_record
from agent.driver.sections import write_section
from agent.errors import AgentError, HostCommandError, LockHeldError
from agent.host.paths import MODULES_DIR
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install import installer as inst
from agent.install.compiler import installer_env
from agent.install.kernels import PendingKernel, installed_kernels, pending_kernels
from agent.install.kit import Kit
from agent.install.pin import Pin, record_matches
from agent.install.staging import verified_copy
from agent.settings import Settings

log = structlog.get_logger(__name__)

SECTION = "prebuilds"
# The modules the load step needs; all must be on disk with the pinned version.
NEEDED = ("nvidia", "nvidia-uvm", "nvidia-modeset")
NICE = "19"  # the build yields to everything else on the node
RETRY_FAILED_SECONDS = 3600.0  # a failed prebuild (headers gone, build error) waits this long
_VERSION = re.compile(rb"(?:^|\x00)version=([^\x00]+)")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def prebuilds(root: HostRoot) -> dict[str, dict[str, Any]]:
    return read_prebuilds(root)  # the same reader the metrics use (well-formed entries only)


def _ko_files(root: HostRoot, release: str) -> dict[str, list[Path]]:
    """Every nvidia*.ko under the release's tree by module name (kernel/, updates/dkms/...)."""
    base = root.path(f"{MODULES_DIR}/{release}")
    out: dict[str, list[Path]] = {}
    try:
        for path in sorted(base.rglob("nvidia*.ko*")):
            name = path.name.split(".ko")[0].replace("_", "-")
            out.setdefault(name, []).append(path)
    except OSError:
        pass
    return out


def _ko_version(path: Path) -> str | None:
    """The .modinfo `version=` of an uncompressed .ko; None when unreadable or compressed."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    found = _VERSION.search(data)
    return found.group(1).decode(errors="replace") if found else None


def modules_on_disk(root: HostRoot, release: str, module_version: str) -> bool:
    """Every module the load step needs is under /lib/modules/<release>, this version."""
    files = _ko_files(root, release)
    return all(any(_ko_version(path) in (None, module_version) for path in files.get(name, []))
               for name in NEEDED)


def built_for(root: HostRoot, pin: Pin, release: str) -> bool:
    """The fast path's question after a reboot: were this pin's modules prebuilt here?"""
    entry = prebuilds(root).get(release) or {}
    return (entry.get("outcome") == "built" and entry.get("config_digest") == pin.digest
            and modules_on_disk(root, release, pin.module_version))


def source_path(root: HostRoot, release: str) -> str:
    build = f"{MODULES_DIR}/{release}/build"
    try:
        if (root.resolve(build) / "Makefile").is_file():
            return build
    except OSError:
        pass
    return f"/usr/src/linux-headers-{release}"


def prebuild_argv(run_path: str, module_type: str, release: str, source: str, *,
                  log_file: str | None = None) -> list[str]:
    """`nice sh <run> --silent --no-drm -M <type> --kernel-modules-only --kernel-name=...`;
    the kernel's compiler goes in the environment (CC and MAKEFLAGS=CC=, compiler.py)."""
    return ["nice", "-n", NICE, "sh", run_path, "--silent", "--no-drm", "-M", module_type,
            "--kernel-modules-only", f"--kernel-name={release}",
            f"--kernel-source-path={source}", "--no-kernel-module-source",
            f"--log-file-name={log_file or prebuild_log(release)}"]


def prebuild_log(release: str) -> str:
    return f"/var/log/nvidia-installer-{release}.log"


def dkms_log(module_version: str) -> str:
    """Where DKMS leaves a failed build's log (dkms.in do_build: build/make.log)."""
    return f"/var/lib/dkms/nvidia/{module_version}/build/make.log"


def dkms_registered(root: HostRoot, module_version: str) -> bool:
    return (root.which("dkms") is not None
            and root.exists(f"/usr/src/nvidia-{module_version}/dkms.conf"))


@dataclass
class Prebuilder:
    """Everything one prebuild needs; the runner runs on the host, niced."""

    settings: Settings
    root: HostRoot
    runner: HostRunner
    kit: Kit
    pin: Pin
    clock: Callable[[], float] = time.monotonic

    def installed(self) -> InstallRecord | None:
        """The record of a successful install of this pin (prebuilds need its module type)."""
        record = read_record(self.root)
        if record is None or record_matches(record, self.pin) is not None:
            return None
        return record if record.module_type in ("open", "proprietary") else None

    def wanted(self, running: str) -> list[PendingKernel]:
        """Pending kernels this pin is not built for yet; a failure is retried after
        RETRY_FAILED_SECONDS (or at once for a new pin), not every cycle."""
        entries = prebuilds(self.root)
        return [k for k in pending_kernels(self.root, running)
                if not built_for(self.root, self.pin, k.release)
                and not self._failed_recently(entries.get(k.release))]

    def _failed_recently(self, entry: dict[str, Any] | None) -> bool:
        if not entry or entry.get("outcome") != "failed":
            return False
        if entry.get("config_digest") != self.pin.digest:
            return False
        try:
            when = datetime.fromisoformat(str(entry.get("finished_at")))
        except ValueError:
            return False
        return (datetime.now(UTC) - when).total_seconds() < RETRY_FAILED_SECONDS

    def build(self, release: str, record: InstallRecord) -> dict[str, Any]:
        """Build for one kernel and record the result; never raises an AgentError."""
        begun = self.clock()
        log.info("prebuild_started", kernel_release=release, version=self.pin.release.version,
                 module_type=record.module_type)
        try:
            how = self._build(release, record)
        except AgentError as exc:
            entry = self._entry("failed", begun, error=exc.line())
            self._record(release, entry)  # recorded before it is said: readers see both
            log.warning("prebuild_failed", kernel_release=release, error=exc.line(),
                        hint="the node still works; after a reboot into this kernel the "
                             "driver is built at boot instead")
        else:
            entry = self._entry("built", begun, how=how)
            self._record(release, entry)
            log.info("prebuild_finished", kernel_release=release, how=how,
                     seconds=entry["seconds"], changed=how != "on_disk")
        return entry

    def _entry(self, outcome: str, begun: float, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "outcome": outcome, "finished_at": _now(), "error": extra.pop("error", ""),
            "version": self.pin.release.version, "module_version": self.pin.module_version,
            "config_digest": self.pin.digest, "seconds": round(self.clock() - begun, 3)}
        entry.update(extra)
        return entry

    def _record(self, release: str, entry: dict[str, Any]) -> None:
        current = prebuilds(self.root)
        installed = set(installed_kernels(self.root))
        # Entries of kernels no longer installed go; the rest stay.
        kept = {rel: e for rel, e in current.items() if rel in installed or rel == release}
        kept[release] = entry
        write_section(self.root, SECTION, kept)

    def _build(self, release: str, record: InstallRecord) -> str:
        modver = self.pin.module_version
        if modules_on_disk(self.root, release, modver):
            return "on_disk"  # DKMS's kernel hook, or a run killed after the installer
        wait = self.settings.dpkg_lock_wait
        if not self.kit.headers_present(self.root, release):
            self.kit.ensure_build_deps(self.root, self.runner, release, lock_wait=wait)
        # That kernel's own compiler (compiler.py), installed through apt when missing.
        cc = self.kit.ensure_compiler(self.root, self.runner, release, lock_wait=wait).cc
        if dkms_registered(self.root, modver):
            self._run(["nice", "-n", NICE, "dkms", "install", "-m", "nvidia", "-v", modver,
                       "-k", release], release, cc)
            how = "dkms"
        else:
            self._clear_partial(release)
            path = Path(self.kit.ensure_installer(self.pin.release, self.root, self.settings))
            run_path = inst.host_path_of(self.root, path)
            with verified_copy(self.root, run_path) as private:  # what runs was verified
                own_log = inst.private_log(private, prebuild_log(release))
                argv = prebuild_argv(private, record.module_type, release,
                                     source_path(self.root, release), log_file=own_log)
                self._run(argv, release, cc, own_log)
            how = "installer"
        if not modules_on_disk(self.root, release, modver):
            missing = inst.InstallerFailed(
                f"prebuild for {release} finished but {', '.join(NEEDED)} {modver} are not "
                f"under {MODULES_DIR}/{release}", [])
            where = dkms_log(modver) if how == "dkms" else prebuild_log(release)
            missing.remedy = f"see {where} on the node"
            raise missing
        return how

    def _clear_partial(self, release: str) -> None:
        """Files a killed attempt left for this (non-running) kernel: never the running one's."""
        for path in (p for paths in _ko_files(self.root, release).values() for p in paths):
            host_path = self.root.host_path(path)
            log.info("prebuild_partial_removed", path=host_path)
            self.root.unlink(host_path)  # the entry itself, through the door

    def _run(self, argv: list[str], release: str, cc: str | None,
             own_log: str | None = None) -> None:
        log.info("prebuild_command", kernel_release=release, argv=argv, cc=cc)
        try:
            try:
                self.runner.run(argv, timeout=self.settings.install_timeout,
                                env=installer_env(cc))
            finally:
                if own_log is not None:  # written privately, published by rename
                    inst.publish_log(self.root, own_log, prebuild_log(release))
        except HostCommandError as exc:
            # Only the installer writes that log: for `dkms install` an older one is stale.
            text = (self.root.read_nofollow(prebuild_log(release), limit=inst.MAX_LOG_BYTES)
                    or b"").decode(errors="replace") if own_log is not None else ""
            errors = inst.error_lines(text) or inst.error_lines(exc.stdout + "\n" + exc.stderr)
            why = " | ".join(errors) or exc.message
            failed = inst.InstallerFailed(f"prebuild for kernel {release} failed: {why}", errors)
            where = prebuild_log(release) if own_log else dkms_log(self.pin.module_version)
            failed.remedy = f"see {where} on the node"
            raise failed from exc

    def run_pending(self, running: str, *, limit: int | None = None) -> list[str]:
        """Build for each pending kernel (one at a time); returns the releases attempted."""
        record = self.installed()
        if record is None:
            return []
        done = []
        for kernel in self.wanted(running)[:limit]:
            log.info("prebuild_needed", kernel_release=kernel.release, why=kernel.why)
            self.build(kernel.release, record)
            done.append(kernel.release)
        return done


def after_install(flow: Any) -> bool:
    """The install's last step: prebuild for pending kernels under the install's lock."""
    try:
        builder = Prebuilder(flow.settings, flow.root, flow.runner, flow.kit, flow.pin)
        return bool(builder.run_pending(flow.kernel_release))
    except (AgentError, OSError) as exc:  # a prebuild never fails the install
        log.warning("prebuild_failed", error=str(exc))
        return False


def watch_tick(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit,
               pin: Callable[[], Any] | None = None) -> list[str]:
    """One `watch` cycle's look: file reads only, unless a kernel needs a build; then one
    build, under the host lock taken without waiting (an install in progress wins).

    `pin` gives the pin (watch_loop's is resolved once per process); without it, resolved
    here."""
    from agent.install.pin import resolve_pin
    from agent.pci import detect

    if not detect(kit.scan_pci(), settings.target_spec).is_target_node:
        return []
    builder = Prebuilder(settings, root, runner, kit,
                         pin() if pin is not None else resolve_pin(settings, kit))
    record = builder.installed()
    if record is None or not builder.wanted(record.kernel_release):
        return []
    try:
        with kit.lock(root, wait=False):
            return builder.run_pending(record.kernel_release, limit=1)
    except LockHeldError as exc:
        log.info("prebuild_deferred", reason=exc.message)
        return []


def watch_loop(settings: Settings, stop: threading.Event, *, kit: Kit | None = None,
               interval: float | None = None) -> None:
    """The sidecar's prebuild thread: a look every cycle, one build at a time, niced.

    The settings are this process's for its whole life, so the pin is resolved once, on the
    first cycle that needs it (not on a node that is no target): its warnings, such as
    driver_sha256_overridden, are logged once, not every cycle. A pin that fails to resolve
    is tried again next cycle."""
    from agent.host import open_doors
    from agent.install.kit import real_kit
    from agent.install.pin import resolve_pin

    root, runner = open_doors(settings)
    kit = kit or real_kit()
    pin = functools.cache(functools.partial(resolve_pin, settings, kit))
    _lower_priority()
    every = settings.watch_interval if interval is None else interval
    while not stop.is_set():
        try:
            watch_tick(settings, root, runner, kit, pin)
        except Exception as exc:  # the loop outlives any one bad cycle; the log says why
            log.exception("prebuild_cycle_crashed", error=repr(exc))
        stop.wait(every)


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError as exc:  # best effort: a seccomp profile may forbid it
        log.debug("prebuild_priority_unchanged", error=exc.strerror)
