"""A real Prometheus (Debian's) on loopback scrapes the real `grid-agent watch` on the
simulated node; the node is broken (Unlicensed, and a reboot empties the hand-off with
self-heal off) and the alerts go pending, then firing, then resolve after the repair.

The shipped `for:` durations (10 to 30 minutes) cannot be waited for here: the rules
Prometheus loads are a copy of manifests/monitoring/grid-driver-agent.rules.yaml derived in
`fast_rules` (every `for:` cut to FOR, nothing else changed); the real durations are checked
by promtool in test_rules.py. The scrape is the real /metrics, also linted by
`promtool check metrics` (Prometheus's naming conventions)."""

from __future__ import annotations

import time
import urllib.request

import pytest
import yaml

from tests.e2e.healthrun import start_watch
from tests.e2e.installrun import run_agent
from tests.ops.prom import RULES, dashboard_exprs, grafana_substitute, prometheus, promtool

pytestmark = [pytest.mark.ops, pytest.mark.e2e, pytest.mark.simnode]

FOR = "3s"  # pending for about 3 evaluations before firing
NODE = "rtx-sim"  # the `node` label the PodMonitor would set from the pod's node
BROKEN = {"GridLicenseNotLicensed", "GridHandoffLost", "GridDriverNotReady"}


def fast_rules() -> dict:
    """The shipped rules with every `for:` cut to FOR (and nothing else changed)."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    return data


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def firing(prom) -> set[str]:
    return {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}


def wait(what: str, probe, timeout: float = 30, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def test_alerts_pend_fire_and_resolve_against_the_real_watch(simnode, catalog, tmp_path):
    run = run_agent(simnode.agent_args(), catalog, "install")
    assert run.returncode == 0, run.stderr[-3000:]
    watch = start_watch(simnode, catalog, tmp_path, GRID_AGENT_SELF_HEAL="false")
    try:
        port = watch.port
        watch.wait_event("health_verdict", ready=True)
        lint = promtool("check", "metrics", stdin=scrape(port))
        assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr

        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(fast_rules(), sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": "grid-driver-agent", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"node": NODE}}]}],
        }
        with prometheus(config, tmp_path, lifetime=150) as prom:
            wait("the first scrape",
                 lambda: prom.query('grid_agent_driver_ready{node="rtx-sim"} == 1'))
            time.sleep(4)  # longer than FOR: a healthy node fires nothing
            assert firing(prom) == set()
            # Every dashboard query runs on the real server against the real scrape.
            answers = {where: prom.query(grafana_substitute(expr))
                       for where, expr in dashboard_exprs()}
            ready = answers["panel 'Nodes ready' A"]
            assert [r["value"][1] for r in ready] == ["1"], ready
            assert answers["panel 'Licence state' A"][0]["metric"] == {"state": "licensed"}
            assert answers["panel 'Last install duration' A"][0]["metric"] == {"node": NODE}

            simnode.set_scenarios("unlicensed")
            simnode.reboot()  # /run emptied: marker and mount gone; self-heal is off
            seen: dict[str, list[str]] = {}

            def all_firing():
                for alert in prom.alerts():
                    states = seen.setdefault(alert["labels"]["alertname"], [])
                    if not states or states[-1] != alert["state"]:
                        states.append(alert["state"])
                return all(seen.get(n, [])[-1:] == ["firing"] for n in BROKEN)

            wait("the broken node's alerts to fire", all_firing, timeout=40, every=0.1)
            # Nothing else fires (no watch stall, no lapse). A slow scrape on a loaded machine
            # may make `up` 0 for a second: pending, never firing, is tolerated.
            assert firing(prom) == BROKEN, seen
            for name in BROKEN:
                assert seen[name] == ["pending", "firing"], (name, seen[name])
            for alert in prom.alerts():
                assert alert["labels"]["node"] == NODE
                assert NODE in alert["annotations"]["summary"]
                assert alert["annotations"]["runbook_url"].endswith(
                    alert["labels"]["alertname"].lower())
            licence = next(a for a in prom.alerts()
                           if a["labels"]["alertname"] == "GridLicenseNotLicensed")
            assert licence["labels"]["state"] == "unlicensed"

            simnode.set_scenarios("healthy")
            run = run_agent(simnode.agent_args(), catalog, "install")  # re-publishes
            assert run.returncode == 0, run.stderr[-3000:]
            wait("the alerts to resolve",
                 lambda: not {a["labels"]["alertname"] for a in prom.alerts()} & BROKEN,
                 timeout=40)
            assert firing(prom) == set()
            assert prom.query('grid_agent_driver_ready{node="rtx-sim"} == 1')
    finally:
        assert watch.stop() == 0
