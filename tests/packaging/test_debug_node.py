"""scripts/debug-node prints the exact kubectl command; manifests/oneshot/ is its Job twin."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.packaging.kube import REPO, one, pod_containers, render

pytestmark = pytest.mark.packaging

SCRIPT = REPO / "scripts" / "debug-node"


def debug_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          check=False)


def base_image() -> str:
    ds = one(render("base"), "DaemonSet")
    (image,) = {c["image"] for c in pod_containers(ds["spec"]["template"]["spec"])}
    return image


def test_dry_run_prints_the_exact_command():
    proc = debug_node("--dry-run", "aks-gpu-12345678-vmss000000")
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == [
        "kubectl", "debug", "node/aks-gpu-12345678-vmss000000",
        "--namespace", "gpu-operator", "--profile=sysadmin", f"--image={base_image()}",
        "--attach", "--env=GRID_AGENT_HOST_ROOT=/host", "--", "grid-agent", "run"]


def test_options_and_run_arguments_pass_through():
    proc = debug_node("--dry-run", "--image", "reg.local/gda:9", "-n", "ops", "node-1",
                      "--", "--dry-run")
    argv = shlex.split(proc.stdout)
    assert "--image=reg.local/gda:9" in argv and argv[argv.index("--namespace") + 1] == "ops"
    assert argv[argv.index("--"):] == ["--", "grid-agent", "run", "--dry-run"]


def test_a_node_is_required():
    proc = debug_node("--dry-run")
    assert proc.returncode == 2 and "NODE" in proc.stderr and not proc.stdout


def test_every_flag_it_passes_is_one_kubectl_debug_knows():
    """The real kubectl's help, so a renamed or removed flag fails here, not on a node."""
    argv = shlex.split(debug_node("--dry-run", "n").stdout)
    flags = {a.split("=")[0] for a in argv[: argv.index("--")] if a.startswith("--")}
    help_text = subprocess.run(["kubectl", "debug", "--help"], capture_output=True, text=True,
                               timeout=30, check=True).stdout
    known = set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)=", help_text, re.MULTILINE))
    known.add("--namespace")  # a global kubectl flag (`kubectl options`)
    assert flags and flags <= known, flags - known
    assert '"sysadmin"' in help_text


def test_oneshot_job_runs_like_kubectl_debug():
    objects = render("oneshot")
    job = one(objects, "Job")
    pod = job["spec"]["template"]["spec"]
    (run,) = pod_containers(pod)
    assert run["args"] == ["run"] and run["image"] == base_image()
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    assert run["securityContext"]["privileged"] is True
    host = next(m for m in run["volumeMounts"] if m["mountPath"] == "/host")
    assert host["mountPropagation"] == "HostToContainer"
    assert {"name": "GRID_AGENT_HOST_ROOT", "value": "/host"} in run["env"]
    assert pod["nodeName"] == "NODE_NAME"  # the placeholder the README's sed replaces
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert pod["automountServiceAccountToken"] is False
    assert run["terminationMessagePolicy"] == "FallbackToLogsOnError"
