"""Sections of state.json besides the install record: `prebuilds` and `staged`.

One file, several writers, all under the host lock: each writer reads the whole file,
replaces its own section and writes it back atomically (write_record keeps these too).
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from agent.driver import record
from agent.host.paths import RECORD as RECORD_PATH
from agent.host.root import HostRoot

log = structlog.get_logger(__name__)


def read_state(root: HostRoot) -> dict[str, Any]:
    """The whole state.json as a dict; {} when absent or not a sane file (a FIFO, too big,
    too deeply nested: agent/driver/record.py's one safe read)."""
    return record.read_state(root) or {}


def read_section(root: HostRoot, key: str) -> Any:
    return read_state(root).get(key)


def write_section(root: HostRoot, key: str, value: Any) -> None:
    """Replace one section (None removes it); the rest of the file is kept as it was."""
    data = read_state(root)
    if value is None:
        if key not in data:
            return
        data.pop(key)
    else:
        data[key] = value
    data.setdefault("schema", 1)
    root.write_file(RECORD_PATH, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)
