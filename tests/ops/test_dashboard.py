"""The Grafana dashboard: a well-formed dashboard, every PromQL expression parses (the real
promtool) and names only metrics the agent's registry exports (collected in-process)."""

from __future__ import annotations

import pytest
import yaml

from tests.ops.prom import (
    agent_metric_names,
    dashboard,
    dashboard_exprs,
    grafana_substitute,
    metric_names,
    promtool,
)

pytestmark = pytest.mark.ops

PANEL_KINDS = {"row", "stat", "timeseries", "table", "piechart", "bargauge"}


def test_dashboard_is_well_formed():
    dash = dashboard()
    assert dash["uid"] == "grid-driver-agent" and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["type"] in PANEL_KINDS, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_dashboard_covers_the_fleet_overview():
    """Nodes ready / not by reason, licence state and expiry, install durations, repairs."""
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    for name in ("grid_agent_driver_ready", "grid_agent_check_status",
                 "grid_agent_license_licensed", "grid_agent_license_expiry_timestamp_seconds",
                 "grid_agent_install_duration_seconds", "grid_agent_self_heal_total"):
        assert name in used, name


def test_every_dashboard_expression_parses(tmp_path):
    """Each expression, Grafana's variables substituted, as a recording rule for promtool."""
    exprs = dashboard_exprs()
    group = {"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": grafana_substitute(expr)}
        for i, (_, expr) in enumerate(exprs)]}
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_dashboard_names_only_metrics_the_agent_exports(tmp_path):
    exported = agent_metric_names(tmp_path)
    for where, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where} uses {sorted(names - exported)}: not exported"
