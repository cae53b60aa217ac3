"""The rendered DaemonSet makes the security- and operations-relevant choices on purpose."""

from __future__ import annotations

import re

import pytest

from agent.cli import cli
from agent.health.monitor import VerdictCache
from agent.health.server import HealthApp
from agent.host.paths import LOCK, MARKER
from agent.settings import OPTIONS
from agent.values import host_port
from tests.fakes.clock import FakeClock
from tests.packaging.kube import one, pod_containers, render

pytestmark = pytest.mark.packaging

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


@pytest.fixture(scope="module")
def objects():
    return render("")


@pytest.fixture(scope="module")
def ds(objects):
    return one(objects, "DaemonSet")


@pytest.fixture(scope="module")
def pod(ds):
    return ds["spec"]["template"]["spec"]


def by_name(pod):
    return {c["name"]: c for c in pod_containers(pod)}


def test_pod_shares_only_the_host_pid_namespace(pod):
    assert pod["hostPID"] is True  # nsenter --target 1
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")


def test_no_api_token_anywhere(objects, pod):
    sa = one(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    assert not {o["kind"] for o in objects} & {"Role", "ClusterRole", "RoleBinding",
                                               "ClusterRoleBinding"}


def test_scheduling_targets_operator_skipped_nvidia_nodes(pod):
    assert pod["nodeSelector"] == {"nvidia.com/gpu.deploy.driver": "false"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
    assert "feature.node.kubernetes.io/pci-10de.present" in keys
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists"
               for t in pod["tolerations"])
    assert pod["priorityClassName"] == "system-node-critical"


def test_rolling_update_one_node_at_a_time(ds):
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 1


def test_init_installs_and_the_sidecar_watches(pod):
    assert [c["args"] for c in pod["initContainers"]] == [["install"]]
    assert [c["args"] for c in pod["containers"]] == [["watch"]]


def test_every_container_command_is_a_real_cli_command(pod):
    for container in pod_containers(pod):
        args = container["args"]
        ctx = cli.make_context("grid-agent", [], resilient_parsing=True)
        name, command, rest = cli.resolve_command(ctx, list(args))
        assert command is not None, args
        command.make_context(name, rest, parent=ctx)  # raises on unknown options


def test_privileged_only_where_the_host_is_entered(pod):
    """Both containers nsenter into PID 1 (install: modules, mounts; watch: nvidia-smi under
    the device cgroup, self-heal mounts); nothing else in the pod is privileged."""
    privileged = {name for name, c in by_name(pod).items()
                  if c.get("securityContext", {}).get("privileged")}
    assert privileged == {"install", "watch"}
    for container in pod_containers(pod):
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert "capabilities" not in ctx  # privileged already has them: no misleading list


def test_host_root_at_host_writable_only_for_the_installer(pod):
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {name: {m["mountPath"]: m for m in c["volumeMounts"]}
              for name, c in by_name(pod).items()}
    install, watch = mounts["install"]["/host"], mounts["watch"]["/host"]
    assert volumes[install["name"]]["hostPath"]["path"] == "/"
    assert install["mountPropagation"] == "HostToContainer" and not install.get("readOnly")
    # The network-facing sidecar sees the host read-only (recursively where possible)...
    assert watch["name"] == install["name"]
    assert watch["readOnly"] is True and watch["recursiveReadOnly"] == "IfPossible"
    assert watch.get("mountPropagation", "None") == "None"  # what recursiveReadOnly requires
    # ...and writes exactly two host directories: the marker's and the lock's.
    writable = {path: volumes[m["name"]]["hostPath"]["path"]
                for path, m in mounts["watch"].items()
                if "hostPath" in volumes[m["name"]] and not m.get("readOnly")}
    assert writable == {"/host/run/nvidia/validations": "/run/nvidia/validations",
                        "/host/run/grid-agent": "/run/grid-agent"}
    # Never /run/nvidia itself: /run/nvidia/driver is an rbind of the host's whole /.
    assert not any(p in ("/run/nvidia", "/run") for p in writable.values())
    assert {MARKER.rsplit("/", 1)[0], LOCK.rsplit("/", 1)[0]} == set(writable.values())


def test_image_by_digest_everywhere():
    for name in ("", "base", "oneshot", "overlays/mirror", "overlays/exec-probes",
                 "overlays/kured"):
        for obj in render(name):
            spec = obj.get("spec", {}).get("template", {}).get("spec")
            for container in pod_containers(spec) if spec else ():
                assert re.fullmatch(r"[^@:]+(:\d+)?/[^@:]+@sha256:[0-9a-f]{64}",
                                    container["image"]), (name, container["image"])


def test_network_policy_admits_only_prometheus_to_the_health_port(objects, pod):
    policy = one(objects, "NetworkPolicy")["spec"]
    pod_labels = pod_template_labels(objects)
    assert all(pod_labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    # Both selectors in ONE peer: pods labelled prometheus IN the monitoring namespace
    # (two peers would admit every pod there, and any prometheus-labelled pod anywhere).
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    (port,) = rule["ports"]
    named = {p["name"]: p["containerPort"] for c in pod_containers(pod)
             for p in c.get("ports", [])}
    assert port == {"port": "health", "protocol": "TCP"} and named == {"health": 9402}


def pod_template_labels(objects):
    return one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]


def test_verdict_file_is_on_the_pods_own_emptydir(objects, pod):
    verdict = one(objects, "ConfigMap")["data"]["GRID_AGENT_VERDICT_FILE"]
    watch = by_name(pod)["watch"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in watch["volumeMounts"]
                 if verdict.startswith(m["mountPath"].rstrip("/") + "/"))
    assert "emptyDir" in volumes[mount["name"]]


def test_probes_hit_the_sidecars_real_endpoints_and_port(objects, pod):
    watch = by_name(pod)["watch"]
    listen = one(objects, "ConfigMap")["data"]["GRID_AGENT_LISTEN"]
    default = next(o.default for o in OPTIONS if o.env == "GRID_AGENT_LISTEN")
    assert listen == default
    ports = {p["name"]: p["containerPort"] for p in watch["ports"]}
    assert ports == {"health": host_port(listen)[1]}
    app = HealthApp(VerdictCache(FakeClock()), stale_after=300)
    paths = {}
    for kind in PROBES:
        get = watch[kind]["httpGet"]
        assert get["port"] in (ports["health"], "health"), kind
        assert get["path"] in app.routes, f"{kind} {get['path']} is not served by watch"
        paths[kind] = get["path"]
    assert paths == {"startupProbe": "/livez", "livenessProbe": "/livez",
                     "readinessProbe": "/readyz"}
    assert "startupProbe" not in by_name(pod)["install"]


def test_metrics_service_targets_the_sidecar_port(objects, ds):
    svc = one(objects, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True  # metrics of unhealthy nodes
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["health"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


def test_prestop_is_not_destructive(pod):
    command = by_name(pod)["watch"]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and "uninstall" not in command


def test_termination_message_falls_back_to_logs(pod):
    for container in pod_containers(pod):
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_every_container_has_requests_and_a_memory_limit(pod):
    for container in pod_containers(pod):
        res = container["resources"]
        assert set(res["requests"]) == {"cpu", "memory"}, container["name"]
        assert "memory" in res["limits"], container["name"]
    # The sidecar is small (< 40 MiB RSS, scripts/bench sidecar) and capped on both.
    watch = by_name(pod)["watch"]["resources"]
    assert set(watch["limits"]) == {"cpu", "memory"}
    assert _mib(watch["requests"]["memory"]) >= 40 <= _mib(watch["limits"]["memory"]) // 2


def _mib(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_every_container_reads_the_configmap(objects, pod):
    name = one(objects, "ConfigMap")["metadata"]["name"]
    for container in pod_containers(pod):
        assert container["envFrom"] == [{"configMapRef": {"name": name}}]
