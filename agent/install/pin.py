"""The pin: which release and module type the settings ask for, and whether a record (and the
driver in place) matches it: pure judgements the steps and the dry-run plan share."""

from __future__ import annotations

from dataclasses import dataclass

from agent.catalog import Release
from agent.driver.checks import Expect, driver_checks, first_failure
from agent.driver.record import InstallRecord, config_digest
from agent.driver.snapshot import Snapshot
from agent.errors import VerifyError
from agent.host.root import HostRoot
from agent.install import installer as inst
from agent.install.kit import Kit
from agent.settings import Settings

SUCCESS_OUTCOMES = ("installed", "fast_path")


@dataclass(frozen=True)
class Pin:
    """What the settings ask for, resolved once per run."""

    release: Release
    module_version: str
    requested: str  # auto | open | proprietary | proprietary-strict
    digest: str


def resolve_pin(settings: Settings, kit: Kit) -> Pin:
    release = kit.resolve_release(settings)
    requested = inst.requested_type(settings.kernel_module_type, release.module_type)
    # The digest names what defines the bits on disk: not the mirror URL, not strictness.
    digest = config_digest(version=release.version, sha256=release.sha256,
                           module_type=requested.removesuffix("-strict"), no_drm=True)
    return Pin(release, kit.module_version(release.version), requested, digest)


def record_matches(record: InstallRecord | None, pin: Pin) -> str | None:
    """None when the record says this pin was built and installed, else why not.

    A run that failed only verification (exit 7) had installed the driver: rebuilding
    would need an unload, i.e. a reboot on a node with GPU workloads, and fixes nothing
    the load, licensing and verify steps cannot.
    """
    if record is None:
        return "no install record"
    built = record.outcome in SUCCESS_OUTCOMES or record.exit_code == VerifyError.exit_code
    if not built:
        return f"last run ended {record.outcome} (exit {record.exit_code})"
    if record.version != pin.release.version:
        return f"recorded version {record.version} is not {pin.release.version}"
    if record.config_digest != pin.digest:
        return "the install configuration changed"
    return None


def fast_path_refusal(snap: Snapshot, pin: Pin, targets: tuple[str, ...], *,
                      prebuilt: bool = False) -> str | None:
    """None when the driver in place is this pin, built (or prebuilt) for this kernel, and
    works; `prebuilt`: this pin's modules were prebuilt for the running kernel."""
    state = snap.modules
    if not state.loaded:
        return "the nvidia module is not loaded"
    if state.version != pin.module_version:
        return f"loaded module is {state.version}, pin is {pin.module_version}"
    record = snap.record
    why = record_matches(record, pin)
    if why or record is None:
        return why
    if state.module_type is not None and state.module_type != record.module_type:
        return f"loaded {state.module_type} modules, recorded {record.module_type}"
    if record.kernel_release != snap.kernel_release and not prebuilt:
        return f"kernel is {snap.kernel_release}, driver was built for {record.kernel_release}"
    failed = first_failure(driver_checks(snap, Expect(pin.module_version, record.module_type,
                                                      targets)))
    if failed is not None:
        # The full path re-runs load, persistence and licensing, which may fix it.
        return f"verification failed: {failed.reason}"
    return None


def install_reason(record: InstallRecord | None, pin: Pin, kernel_release: str,
                   built: bool, *, prebuilt: bool = False) -> str | None:
    """None when the record says this pin is built (or was prebuilt) for this kernel and
    nvidia.ko is there."""
    why = record_matches(record, pin)
    if why or record is None:
        return why
    if record.kernel_release != kernel_release and not prebuilt:
        return f"built for kernel {record.kernel_release}"
    if not built:
        return f"no nvidia.ko under /lib/modules/{kernel_release}"
    return None


def nvidia_ko_built(root: HostRoot, kernel_release: str) -> bool:
    """An nvidia.ko (any compression) under /lib/modules/<kernel> on the host."""
    return any(root.path(f"/lib/modules/{kernel_release}").rglob("nvidia.ko*"))
