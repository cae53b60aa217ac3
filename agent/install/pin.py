"""The pin: which release and module type the settings ask for, and whether a record matches."""

from __future__ import annotations

from dataclasses import dataclass

from agent.catalog import Release
from agent.driver.record import InstallRecord, config_digest
from agent.errors import VerifyError
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
