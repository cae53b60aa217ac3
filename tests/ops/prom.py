"""The shipped monitoring files, the metric names the agent exports (from its own registry,
in-process), PromQL name extraction, promtool, and a real Prometheus on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from agent.driver.record import RECORD_PATH
from agent.health.metrics import make_registry
from agent.health.monitor import VerdictCache
from tests.fakes.watch import FakeHost, health, healthy_node

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "grid-driver-agent.rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grid-driver-agent-dashboard.json"
SCRAPE_CONFIG = MONITORING / "scrape-config.yaml"
ALERT_TESTS = Path(__file__).with_name("alerts.test.yaml")

# Series the alerts use that the agent does not export: Prometheus's own `up`, and
# kube-state-metrics (the README's "Alerts and runbooks" names them and what they need).
EXTERNAL_SERIES = frozenset({
    "up",
    "kube_node_labels",
    "kube_pod_info",
    "kube_pod_status_phase",
    "kube_pod_init_container_status_restarts_total",
    "kube_pod_init_container_status_last_terminated_exitcode",
})


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} not found: install Debian's prometheus package (scripts/setup)"
    return path


def promtool(*args: str, cwd: Path | None = None, stdin: str | None = None):
    return subprocess.run([need("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, input=stdin, check=False)


def rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def alert_rules() -> list[dict]:
    return [r for group in rules()["groups"] for r in group["rules"] if "alert" in r]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            found.append((f"variable {var['name']}", inner.group(1) if inner else query))
    return found


# Grafana's variables, as Grafana substitutes them before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__range": "1h", "$__interval": "1m",
                     "$node": ".*"}


def grafana_substitute(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (promtool has no such command in 2.42):
    strings, label matchers, ranges and grouping lists removed, then every identifier that
    is not a function call or keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def agent_registry(tmp: Path) -> CollectorRegistry:
    """The agent's registry after a real check cycle on the health tests' fake node, with a
    prebuild recorded and a self-heal counted: every family has samples."""
    healthy_node(tmp)
    state = tmp / RECORD_PATH.lstrip("/")
    state.write_text(json.dumps({**json.loads(state.read_text()), "prebuilds": {
        "6.8.0-1019-azure": {"outcome": "built", "finished_at": "2026-06-01T10:00:00+00:00"}}}))
    h = health(tmp, FakeHost(tmp))
    cache = VerdictCache(h.clock)
    cache.put(h.check_once(), timed_out=False, healed="published")
    return make_registry(cache, stale_after=100.0)


def agent_metric_names(tmp: Path) -> set[str]:
    """Every sample name the agent's registry exports, collected in this process."""
    names = set()
    for family in agent_registry(tmp).collect():
        names.add(family.name + {"counter": "_total", "info": "_info"}.get(family.type, ""))
        names |= {s.name for s in family.samples}
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class Prometheus:
    """A real Prometheus on 127.0.0.1 with its own data directory."""

    proc: subprocess.Popen
    port: int
    log: Path

    def url(self, path: str, **params: str) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"http://127.0.0.1:{self.port}{path}{query}"

    def query(self, expr: str) -> list[dict]:
        data = get_json(self.url("/api/v1/query", query=expr))
        assert data["status"] == "success", data
        return data["data"]["result"]

    def alerts(self) -> list[dict]:
        return get_json(self.url("/api/v1/alerts"))["data"]["alerts"]


@contextlib.contextmanager
def prometheus(config: dict, tmp: Path, *, lifetime: float = 180) -> Iterator[Prometheus]:
    """Start Prometheus on a free loopback port; `timeout` ends it after `lifetime` seconds
    even if the test dies, and it is terminated when the block ends."""
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port, log = free_port(), tmp / "prometheus.log"
    argv = ["timeout", "--kill-after=5", str(int(lifetime)), need("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
            "--log.level=warn"]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    server = Prometheus(proc, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(server.url("/-/ready"), timeout=2) as resp:
                    if resp.status == 200:
                        break
            assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"prometheus not ready: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
