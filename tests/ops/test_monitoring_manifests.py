"""manifests/monitoring/: renders with the real kubectl, stays out of the default deployment,
its ConfigMap validates against Kubernetes 1.32 to 1.35, and the two Prometheus Operator
objects (CRDs kubernetes-validate cannot know) have the structure the operator reads and
select what the DaemonSet really runs. The plain scrape job passes `promtool check config`."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.ops.prom import DASHBOARD, RULES, SCRAPE_CONFIG, promtool, rules
from tests.packaging.kube import KUBE_VERSIONS, render

pytestmark = [pytest.mark.ops, pytest.mark.packaging]

MONITORING_KINDS = {"PodMonitor", "PrometheusRule", "ConfigMap"}
RULE_KEYS = {"alert", "expr", "for", "labels", "annotations"}
DURATION = re.compile(r"^(\d+[smhdwy])+$")


def by_kind(kind: str) -> dict:
    (found,) = [o for o in render("monitoring") if o["kind"] == kind]
    return found


def test_monitoring_renders_its_kinds_into_the_operator_namespace():
    objects = render("monitoring")
    assert {o["kind"] for o in objects} == MONITORING_KINDS
    for obj in objects:
        assert obj["metadata"]["namespace"] == "gpu-operator", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "grid-driver-agent"


def test_the_default_deployment_needs_no_operator_crds():
    assert not {o["kind"] for o in render("")} & {"PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_the_dashboard_configmap_validates(tmp_path, version):
    import subprocess

    path = tmp_path / "configmap.yaml"
    path.write_text(yaml.safe_dump(by_kind("ConfigMap")))
    proc = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", version,
                           str(path)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dashboard_configmap_is_for_grafanas_sidecar():
    cm = by_kind("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["name"] == "grid-driver-agent-dashboard"  # no hash suffix
    assert json.loads(cm["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text())


def test_prometheusrule_structure():
    obj = by_kind("PrometheusRule")
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(obj["spec"]) == {"groups"}
    assert obj["spec"] == rules()
    for group in obj["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) == RULE_KEYS, rule.get("alert")
            assert isinstance(rule["expr"], str) and DURATION.match(rule["for"])
            assert all(isinstance(v, str) for v in rule["labels"].values())
            assert all(isinstance(v, str) for v in rule["annotations"].values())


def test_podmonitor_selects_the_daemonsets_pods_and_port():
    pm = by_kind("PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pm["spec"]) == {"jobLabel", "selector", "podMetricsEndpoints"}
    ds = next(o for o in render("base") if o["kind"] == "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    # job="grid-driver-agent", as the rules' up{job=...} expects
    assert pod_labels[pm["spec"]["jobLabel"]] == "grid-driver-agent"
    assert 'up{job="grid-driver-agent"}' in RULES.read_text()
    ports = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
    relabel = {r.get("targetLabel"): r for r in endpoint["relabelings"]}
    assert relabel["node"]["sourceLabels"] == ["__meta_kubernetes_pod_node_name"]
    keep = relabel[None]
    assert keep == {"sourceLabels": ["__meta_kubernetes_pod_phase"], "regex": "Running",
                    "action": "keep"}
    for r in endpoint["relabelings"]:
        assert set(r) <= {"sourceLabels", "targetLabel", "regex", "action", "replacement"}


def test_the_plain_scrape_job_and_rules_pass_promtool_check_config(tmp_path):
    """Debian builds Prometheus without Kubernetes discovery (its promtool rejects
    `kubernetes_sd_configs`): that one block is checked by hand and swapped for a static
    target, so promtool still checks the job, its relabelling and the rules file."""
    (tmp_path / RULES.name).write_text(RULES.read_text())
    jobs = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (sd,) = jobs[0].pop("kubernetes_sd_configs")
    assert sd == {"role": "pod", "namespaces": {"names": ["gpu-operator"]}}
    jobs[0]["static_configs"] = [{"targets": ["127.0.0.1:9402"]}]
    config = {"global": {"scrape_interval": "30s", "evaluation_interval": "30s"},
              "rule_files": [RULES.name], "scrape_configs": jobs}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = config["scrape_configs"][0]
    assert job["job_name"] == "grid-driver-agent"
    assert any(r.get("target_label") == "node" for r in job["relabel_configs"])

