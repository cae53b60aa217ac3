from agent.driver.record import (
    RECORD_PATH,
    InstallRecord,
    config_digest,
    read_record,
    remove_record,
    write_record,
)
from agent.host.root import HostRoot

RECORD = InstallRecord(
    version="580.105.08-grid-azure", module_version="580.105.08",
    kernel_release="6.8.0-1017-azure", module_type="proprietary",
    config_digest=config_digest(version="580.105.08-grid-azure", module_type="proprietary"),
    outcome="installed", exit_code=0, duration_seconds=42.5,
    finished_at="2026-11-23T12:00:00+00:00",
)


def test_round_trip_and_remove(tmp_path):
    root = HostRoot(tmp_path)
    assert read_record(root) is None
    write_record(root, RECORD)
    assert read_record(root) == RECORD
    assert remove_record(root) is True
    assert remove_record(root) is False


def test_corrupt_or_partial_record_reads_as_none(tmp_path):
    root = HostRoot(tmp_path)
    path = root.path(RECORD_PATH)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_record(root) is None
    path.write_text('{"version": "x"}')
    assert read_record(root) is None


def test_digest_is_order_independent_and_sensitive_to_values():
    assert config_digest(a=1, b="x") == config_digest(b="x", a=1)
    assert config_digest(a=1) != config_digest(a=2)


# -- a hostile or broken state.json counts as no record (issue 12 item 6) ----------------

import json  # noqa: E402
import os  # noqa: E402
from dataclasses import asdict, fields  # noqa: E402

import pytest  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

from agent.driver.record import _TYPES, MAX_STATE_BYTES, read_prebuilds, read_state  # noqa: E402


def state_path(tmp_path):
    path = HostRoot(tmp_path).path(RECORD_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def unreadable(root):
    with capture_logs() as logs:
        assert read_record(root) is None
        assert read_prebuilds(root) == {}
    return [e for e in logs if e["event"] == "install_record_unreadable"]


def test_the_field_types_cover_the_record():
    assert set(_TYPES) == {f.name for f in fields(InstallRecord)}


def test_a_fifo_is_never_opened_for_a_blocking_read(tmp_path):
    os.mkfifo(state_path(tmp_path))
    assert unreadable(HostRoot(tmp_path))[0]["error"] == "not a regular file"


def test_a_directory_is_no_record(tmp_path):
    state_path(tmp_path).mkdir()
    assert unreadable(HostRoot(tmp_path))


def test_an_oversized_file_is_not_read(tmp_path):
    state_path(tmp_path).write_text(" " * (MAX_STATE_BYTES + 1) + "{}")
    assert "over the" in unreadable(HostRoot(tmp_path))[0]["error"]


def test_deep_nesting_is_no_record_not_a_recursion_crash(tmp_path):
    state_path(tmp_path).write_text("[" * 200_000 + "]" * 200_000)
    assert unreadable(HostRoot(tmp_path))[0]["error"] == "not JSON: RecursionError"
    state_path(tmp_path).write_text('{"prebuilds": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert unreadable(HostRoot(tmp_path))


@pytest.mark.parametrize(("field", "value"), [
    ("exit_code", "0"), ("exit_code", True), ("exit_code", 1.5), ("duration_seconds", "x"),
    ("outcome", ["installed"]), ("version", None), ("kernel_release", 5),
    ("finished_at", {"a": 1}), ("module_type", False)])
def test_wrongly_typed_fields_are_no_record(tmp_path, field, value):
    state_path(tmp_path).write_text(json.dumps({**asdict(RECORD), field: value}))
    assert read_record(HostRoot(tmp_path)) is None


def test_non_finite_duration_is_no_record(tmp_path):
    state_path(tmp_path).write_text(json.dumps(asdict(RECORD)).replace("42.5", "NaN"))
    assert read_record(HostRoot(tmp_path)) is None


@pytest.mark.parametrize("text", ["[]", "7", '"s"', "null", "\xff\xfe"])
def test_not_an_object_is_no_record(tmp_path, text):
    state_path(tmp_path).write_bytes(text.encode("latin-1"))
    assert read_state(HostRoot(tmp_path)) is None
