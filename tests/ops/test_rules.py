"""The alert rules: parsed and linted by the real promtool, unit-tested with input series
(tests/ops/alerts.test.yaml: each alert fires when it should and stays quiet through a normal
install and normal licence renewals, at the shipped `for:` durations), one source for the
plain rules file and the PrometheusRule, a runbook per alert, and only metrics that exist."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.ops.prom import (
    ALERT_TESTS,
    EXTERNAL_SERIES,
    PROMETHEUS_RULE,
    REPO,
    RULES,
    agent_metric_names,
    agent_registry,
    alert_rules,
    metric_names,
    promtool,
    rules,
)

pytestmark = pytest.mark.ops

ALERTS = ("GridDriverNotReady", "GridLicenseNotLicensed", "GridLicenseLapsing",
          "GridHandoffLost", "GridAgentWatchStalled", "GridDriverInstallFailing",
          "GridDriverPrebuildFailing", "GridAgentPodMissing")


def test_promtool_checks_the_rules_file():
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


def test_promtool_checks_the_prometheusrule_spec(tmp_path):
    spec = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = promtool("check", "rules", str(tmp_path / "spec.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_every_alert():
    proc = promtool("test", "rules", str(ALERT_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"]
             if case["exp_alerts"]}
    quiet_in_install = {case["alertname"] for case in tests[0]["alert_rule_test"]}
    assert fired == set(ALERTS), "an alert without a test that makes it fire"
    assert quiet_in_install == set(ALERTS), "an alert not checked quiet in a normal install"
    # The unit tests run the shipped file itself, with its real durations.
    assert (ALERT_TESTS.parent / yaml.safe_load(ALERT_TESTS.read_text())["rule_files"][0]
            ).resolve() == RULES


def test_the_prometheusrule_is_generated_from_the_rules_file():
    assert yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"] == rules()
    proc = subprocess.run([str(REPO / "scripts/gen-monitoring"), "--check"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def _duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, text
    return sum(int(n) * units[u] for n, u in zip(parts.groups(), "dhms", strict=True) if n)


def test_every_alert_has_severity_for_summary_naming_the_node_and_a_runbook():
    assert [r["alert"] for r in alert_rules()] == list(ALERTS)
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        # An install takes minutes and licensing after it a minute or two: nothing shorter.
        assert _duration_seconds(rule["for"]) >= 600, name
        assert "{{ $labels.node }}" in rule["annotations"]["summary"], name
        assert rule["annotations"]["description"].strip(), name
        assert rule["annotations"]["runbook_url"].endswith(f"README.md#{name.lower()}"), name


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_every_runbook_url_has_its_readme_section():
    readme = (REPO / "README.md").read_text()
    anchors = _anchors(readme)
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"README.md has no section for #{anchor}"
        section = readme.split(f"### {rule['alert']}\n", 1)[1].split("\n### ", 1)[0]
        for must in ("kubectl", "/status", "grid-agent check"):
            assert must in section, f"runbook {rule['alert']} lacks {must!r}"


def test_alerts_name_only_metrics_the_agent_exports(tmp_path):
    exported = agent_metric_names(tmp_path)
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        ours = {n for n in names if n.startswith("grid_agent_")}
        assert ours <= exported, f"{rule['alert']} uses {sorted(ours - exported)}, not exported"
        assert names - ours <= EXTERNAL_SERIES, f"{rule['alert']}: {sorted(names - ours)}"


def test_the_name_extraction_sees_what_an_expression_selects():
    expr = ('count_values without () ("exit_code", a_total{x="y", z=~"w.+"} > 0) and on (pod) '
            'increase(b_seconds[1h] offset 5m) >= 3 * on (pod) group_left (node) max by (node) '
            '(c_info) or vector(0) unless time() - d')
    assert metric_names(expr) == {"a_total", "b_seconds", "c_info", "d"}


def test_the_agents_metrics_follow_prometheus_naming(tmp_path):
    """promtool's linter on every family the registry exports (units in names, `_total`
    counters, `_info` at 1); the e2e test lints a real scrape of `watch` the same way."""
    from agent.health.metrics import render

    text = render(agent_registry(tmp_path)).decode()
    assert "grid_agent_prebuild_success{" in text and "grid_agent_self_heal_total{" in text
    proc = promtool("check", "metrics", stdin=text)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_the_readme_lists_exactly_the_metrics_the_agent_exports(tmp_path):
    readme = (REPO / "README.md").read_text()
    listed = readme.split("\nMetrics: ", 1)[1].split("\n\n", 1)[0]
    names = set(re.findall(r"`(grid_agent_\w+)", listed))
    exported = {n for n in agent_metric_names(tmp_path) if n.startswith("grid_agent_")}
    assert names == exported, (f"README lacks {sorted(exported - names)}; "
                               f"lists unexported {sorted(names - exported)}")
