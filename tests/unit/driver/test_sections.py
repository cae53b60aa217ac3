"""state.json sections: a new install record keeps `prebuilds` and `staged`."""

import json

from agent.driver.record import RECORD_PATH, InstallRecord, read_record, write_record
from agent.driver.sections import read_section, write_section
from agent.host.root import HostRoot

RECORD = InstallRecord(
    version="580.105.08-grid-azure", module_version="580.105.08",
    kernel_release="6.8.0-1017-azure", module_type="proprietary", config_digest="d",
    outcome="installed", exit_code=0, duration_seconds=1.0, finished_at="2026-01-01T00:00:00")


def test_sections_survive_a_new_record_and_the_record_survives_a_section(tmp_path):
    root = HostRoot(tmp_path)
    write_record(root, RECORD)
    write_section(root, "prebuilds", {"6.8.0-1020-azure": {"outcome": "built"}})
    assert read_record(root) == RECORD
    write_record(root, RECORD)
    assert read_section(root, "prebuilds") == {"6.8.0-1020-azure": {"outcome": "built"}}
    write_section(root, "prebuilds", None)
    data = json.loads(root.path(RECORD_PATH).read_text())
    assert "prebuilds" not in data and data["version"] == RECORD.version


def test_a_section_on_a_node_without_a_record(tmp_path):
    root = HostRoot(tmp_path)
    write_section(root, "staged", {"version": "x"})
    assert read_record(root) is None
    assert read_section(root, "staged") == {"version": "x"}
