"""The install record on the host (`/var/lib/grid-agent/state.json`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import structlog

from agent.host.files import write_atomic
from agent.host.paths import RECORD as RECORD_PATH
from agent.host.root import HostRoot

log = structlog.get_logger(__name__)

SCHEMA = 1


@dataclass(frozen=True)
class InstallRecord:
    version: str  # the release, e.g. 580.105.08-grid-azure
    module_version: str  # what /sys/module/nvidia/version shows, e.g. 580.105.08
    kernel_release: str
    module_type: str  # open | proprietary
    config_digest: str
    outcome: str  # installed | fast_path | failed
    exit_code: int
    duration_seconds: float
    finished_at: str  # ISO 8601, UTC

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=2, sort_keys=True) + "\n"


def config_digest(**config: Any) -> str:
    """SHA-256 of the canonical JSON of what defines an install (version, type, flags...)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_record(root: HostRoot) -> InstallRecord | None:
    """The record, or None when absent or unreadable (a corrupt record means: reinstall)."""
    text = root.read_text(RECORD_PATH)
    if text is None:
        return None
    try:
        data = json.loads(text)
        wanted = {f.name for f in fields(InstallRecord)}
        return InstallRecord(**{k: data[k] for k in wanted})
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("install_record_unreadable", path=RECORD_PATH, error=str(exc))
        return None


def read_prebuilds(root: HostRoot) -> dict[str, dict[str, Any]]:
    """state.json's `prebuilds` map {kernel release: {"outcome": "built"|"failed", ...}}.

    Only well-formed entries (a dict with a string outcome); {} when absent or unreadable.
    """
    text = root.read_text(RECORD_PATH)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    found = data.get("prebuilds") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return {}
    return {str(release): entry for release, entry in found.items()
            if isinstance(entry, dict) and isinstance(entry.get("outcome"), str)}


# state.json sections other writers own (agent/driver/sections.py): a new record keeps them.
OTHER_SECTIONS = ("prebuilds", "staged")


def write_record(root: HostRoot, record: InstallRecord) -> None:
    text = record.to_json()
    kept = _other_sections(root)
    if kept:
        text = json.dumps({**json.loads(text), **kept}, indent=2, sort_keys=True) + "\n"
    write_atomic(root.path(RECORD_PATH), text)


def _other_sections(root: HostRoot) -> dict[str, Any]:
    try:
        data = json.loads(root.read_text(RECORD_PATH) or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: data[key] for key in OTHER_SECTIONS if key in data}


def remove_record(root: HostRoot) -> bool:
    path = root.path(RECORD_PATH)
    if not path.exists():
        return False
    path.unlink()
    return True
