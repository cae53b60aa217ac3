"""The install record on the host (`/var/lib/grid-agent/state.json`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any

import structlog

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


MAX_STATE_BYTES = 1 << 20  # a record is ~400 bytes; prebuilds add a few hundred per kernel
_TYPES: dict[str, tuple[type, ...]] = {
    "version": (str,), "module_version": (str,), "kernel_release": (str,),
    "module_type": (str,), "config_digest": (str,), "outcome": (str,), "exit_code": (int,),
    "duration_seconds": (int, float), "finished_at": (str,),
}


def _unreadable(why: str) -> None:
    log.warning("install_record_unreadable", path=RECORD_PATH, error=why,
                treated_as="no record")


def read_state(root: HostRoot) -> dict[str, Any] | None:
    """state.json as a dict, or None when absent or not a sane record: a FIFO or device
    (never opened for a blocking read), over MAX_STATE_BYTES, not JSON, too deeply
    nested, not an object. Whatever is wrong is logged once and counts as no record."""
    try:
        path = root.resolve(RECORD_PATH)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _unreadable(f"cannot open: {exc.strerror}")
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            _unreadable("not a regular file")
            return None
        if info.st_size > MAX_STATE_BYTES:
            _unreadable(f"{info.st_size} bytes, over the {MAX_STATE_BYTES} byte cap")
            return None
        raw = os.read(fd, MAX_STATE_BYTES + 1)
    except OSError as exc:
        _unreadable(f"cannot read: {exc.strerror}")
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[...]]]] nesting
        _unreadable(f"not JSON: {type(exc).__name__}")
        return None
    if not isinstance(data, dict):
        _unreadable("not a JSON object")
        return None
    return data


def _typed(data: dict[str, Any]) -> InstallRecord:
    for name, kinds in _TYPES.items():
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TypeError(f"{name} is {type(value).__name__}, not {kinds[0].__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"{name} is not finite")
    return InstallRecord(**{name: data[name] for name in _TYPES})


def read_record(root: HostRoot) -> InstallRecord | None:
    """The record, or None when absent or unreadable (a corrupt record means: reinstall)."""
    return record_of(read_state(root))


def record_of(data: dict[str, Any] | None) -> InstallRecord | None:
    """The install record in a read_state() result; None when absent or mistyped."""
    if data is None:
        return None
    try:
        return _typed(data)
    except (KeyError, TypeError) as exc:
        _unreadable(f"wrong or missing field: {exc}")
        return None


def read_prebuilds(root: HostRoot) -> dict[str, dict[str, Any]]:
    """state.json's `prebuilds` map {kernel release: {"outcome": "built"|"failed", ...}}.

    Only well-formed entries (a dict with a string outcome); {} when absent or unreadable.
    """
    return prebuilds_of(read_state(root))


def prebuilds_of(data: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The well-formed `prebuilds` entries of a read_state() result."""
    found = (data or {}).get("prebuilds")
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
    root.write_file(RECORD_PATH, text, mode=0o644)


def _other_sections(root: HostRoot) -> dict[str, Any]:
    data = read_state(root) or {}
    return {key: data[key] for key in OTHER_SECTIONS if key in data}


def remove_record(root: HostRoot) -> bool:
    try:
        return root.unlink(RECORD_PATH)
    except FileNotFoundError:  # no /var/lib/grid-agent at all
        return False
