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
