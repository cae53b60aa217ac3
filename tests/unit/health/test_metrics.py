"""The metrics a real check cycle exports: prebuilds per kernel, the install's finish time,
and every name following Prometheus's conventions (promtool lints the ops tests' scrape)."""

import json

from prometheus_client.parser import text_string_to_metric_families

from agent.driver.record import RECORD_PATH, read_prebuilds
from agent.health.metrics import make_registry, render
from agent.health.monitor import VerdictCache
from agent.host.root import HostRoot
from tests.fakes.watch import FakeHost, health, healthy_node


def scrape(tmp_path) -> dict:
    h = health(tmp_path, FakeHost(tmp_path))
    cache = VerdictCache(h.clock)
    cache.put(h.check_once())
    text = render(make_registry(cache, stale_after=100.0)).decode()
    return {s.name: s for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name != "grid_agent_prebuild_success"} | {
        ("prebuild", s.labels["kernel_release"]): s.value
        for fam in text_string_to_metric_families(text) for s in fam.samples
        if s.name == "grid_agent_prebuild_success"}


def add_prebuilds(root, prebuilds) -> None:
    path = root / RECORD_PATH.lstrip("/")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "prebuilds": prebuilds}))


def test_prebuild_success_per_kernel_release(tmp_path):
    healthy_node(tmp_path)
    add_prebuilds(tmp_path, {
        "6.8.0-1018-azure": {"outcome": "built", "finished_at": "2026-06-01T10:00:00+00:00"},
        "6.8.0-1019-azure": {"outcome": "failed", "finished_at": "2026-06-02T10:00:00+00:00",
                             "error": "kbuild: exit 2"},
        "6.8.0-1020-azure": {"outcome": "running"},  # neither: no series
        "6.8.0-1021-azure": "built",  # malformed: ignored
    })
    got = scrape(tmp_path)
    assert got[("prebuild", "6.8.0-1018-azure")] == 1.0
    assert got[("prebuild", "6.8.0-1019-azure")] == 0.0
    assert ("prebuild", "6.8.0-1020-azure") not in got
    assert ("prebuild", "6.8.0-1021-azure") not in got


def test_no_prebuilds_no_prebuild_series(tmp_path):
    healthy_node(tmp_path)
    assert not any(isinstance(k, tuple) for k in scrape(tmp_path))


def test_install_finish_time_is_a_timestamp_gauge_not_a_label(tmp_path):
    healthy_node(tmp_path)
    got = scrape(tmp_path)
    record = json.loads((tmp_path / RECORD_PATH.lstrip("/")).read_text())
    from datetime import datetime
    expected = datetime.fromisoformat(record["finished_at"]).timestamp()
    assert got["grid_agent_install_finished_timestamp_seconds"].value == expected
    assert "finished_at" not in got["grid_agent_install_info"].labels


def test_read_prebuilds_tolerates_absent_and_corrupt_state(tmp_path):
    root = HostRoot(tmp_path)
    assert read_prebuilds(root) == {}
    path = tmp_path / RECORD_PATH.lstrip("/")
    path.parent.mkdir(parents=True)
    for text in ("{not json", "[]", '{"prebuilds": []}', '{"prebuilds": {"k": {"x": 1}}}'):
        path.write_text(text)
        assert read_prebuilds(root) == {}, text


def test_status_facts_carry_each_prebuilds_error(tmp_path):
    healthy_node(tmp_path)
    add_prebuilds(tmp_path, {"6.8.0-1019-azure": {
        "outcome": "failed", "finished_at": "2026-06-02T10:00:00+00:00",
        "error": "kbuild: exit 2"}})
    facts = health(tmp_path, FakeHost(tmp_path)).check_once().facts
    assert facts["prebuilds"] == {"6.8.0-1019-azure": {
        "outcome": "failed", "finished_at": "2026-06-02T10:00:00+00:00",
        "error": "kbuild: exit 2"}}


def test_a_hostile_state_json_never_breaks_a_scrape(tmp_path):
    import os

    healthy_node(tmp_path)
    path = tmp_path / RECORD_PATH.lstrip("/")
    good = json.loads(path.read_text())
    for hostile in ("[" * 100_000, json.dumps({**good, "exit_code": "0"}),
                    json.dumps({**good, "finished_at": 12}), "fifo"):
        path.unlink()
        if hostile == "fifo":
            os.mkfifo(path)
        else:
            path.write_text(hostile)
        got = scrape(tmp_path)  # no exception: the record is simply absent
        assert "grid_agent_install_exit_code" not in got, hostile
