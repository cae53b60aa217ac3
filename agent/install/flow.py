"""One install run's state, and the wrapper that runs a step between its log events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from agent.driver.checks import Expect
from agent.driver.record import InstallRecord, write_record
from agent.driver.snapshot import Snapshot
from agent.errors import (
    AgentError,
    DownloadError,
    HostCommandMissing,
    InstallError,
    PreflightError,
    VerifyError,
)
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install import installer as inst
from agent.install.kit import Kit
from agent.install.pin import Pin
from agent.install.verify import VerifyResult
from agent.settings import Settings

log = structlog.get_logger(__name__)

Progress = Callable[[str, str, bool | None], None]  # (started|finished|failed, step, changed)


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


@dataclass
class Flow:
    """One install run: the collaborators, the pin, and what each step hands the next."""

    settings: Settings
    root: HostRoot
    runner: HostRunner
    kit: Kit
    pin: Pin
    targets: tuple[str, ...] = ()  # the target GPUs' PCI slots nvidia-smi must list
    progress: Progress | None = None
    # Filled in by the steps, in order (steps.py says which step writes what).
    seen: Snapshot | None = None  # fast_path: the node as it was before anything changed
    fast: bool = False  # fast_path: the driver in place is this pin and works
    kernel_release: str = ""  # fast_path, then preflight
    install_reason: str | None = None  # preflight: why the installer must run; None: built
    run_path: str = ""  # download: the .run by its host path
    cc: str | None = None  # packages: the kernel's own gcc-N when the host's default differs
    choice: inst.ModuleChoice | None = None  # installer: the module type and its fallback
    module_type: str = ""  # fast_path/preflight (recorded) or installer (installed)
    verified: VerifyResult | None = None  # fast_path or verify
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

    def snapshot(self, *, kernel: bool = False) -> Snapshot:
        return self.kit.snapshot(self.root, self.runner, kernel=kernel, handoff=False,
                                 timeout=self.settings.command_timeout)

    def expect(self) -> Expect:
        return Expect(self.pin.module_version, self.module_type or None, self.targets)

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
