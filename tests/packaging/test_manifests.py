"""The kustomizations render with kubectl, validate against Kubernetes 1.32 to 1.35, and
set only settings the agent knows (and document every one it has)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from agent.settings import OPTIONS, build_settings
from tests.packaging.kube import (
    KUBE_VERSIONS,
    KUSTOMIZATIONS,
    MANIFESTS,
    env_file,
    env_names,
    one,
    render,
    render_text,
)

pytestmark = pytest.mark.packaging

ENV_FILE = MANIFESTS / "base" / "agent.env"


@pytest.fixture(scope="module")
def rendered_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered")
    files = []
    for name in KUSTOMIZATIONS:
        path = out / f"{name.replace('/', '-') or 'default'}.yaml"
        path.write_text(render_text(name))
        files.append(path)
    return files


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_kinds_into_the_operator_namespace(name):
    objects = render(name)
    assert objects, f"{name or 'manifests/'} rendered nothing"
    for obj in objects:
        assert obj["metadata"]["namespace"] == "gpu-operator", obj["metadata"]["name"]
    # Never a Namespace: `kubectl delete -k` must not take the GPU Operator's with it.
    assert "Namespace" not in {o["kind"] for o in objects}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_rendered_object_validates_strictly(rendered_files, version):
    proc = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", version,
         *map(str, rendered_files)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_default_deployment_is_the_base():
    assert render("") == render("base")


def _option_envs() -> dict[str, object]:
    return {o.env: o for o in OPTIONS}


def test_every_variable_the_manifests_set_is_a_setting():
    known = _option_envs()
    used = set()
    for name in KUSTOMIZATIONS:
        used |= {n for n in env_names(render(name)) if n.startswith("GRID_AGENT_")}
    unknown = sorted(used - set(known))
    assert not unknown, f"manifests set variables agent/settings.py OPTIONS lacks: {unknown}"


def test_the_configmap_documents_every_setting():
    """Fails with the lines to paste into manifests/base/agent.env for each missing option."""
    documented = env_file(ENV_FILE)
    rendered = one(render("base"), "ConfigMap")["data"]
    missing = [o for o in OPTIONS if o.env not in documented or o.env not in rendered]
    paste = "\n".join(f"{textwrap.indent(textwrap.fill(o.help, 90), '# ')}\n"
                      f"{o.env}={o.default}\n" for o in missing)
    names = [o.env for o in missing]
    assert not names, f"{ENV_FILE} lacks {names}; add:\n\n{paste}"


def test_the_pod_environment_resolves_to_settings():
    """The agent accepts the ConfigMap as its whole environment (ConfigError otherwise)."""
    settings = build_settings({}, one(render("base"), "ConfigMap")["data"])
    assert settings.host_root == Path("/host") and settings.nsenter and settings.host_pid == 1
    assert settings.log_format == "json"


def test_every_setting_is_commented_in_the_env_file():
    text = ENV_FILE.read_text().splitlines()
    for i, line in enumerate(text):
        if line.startswith("GRID_AGENT_"):
            assert i and text[i - 1].startswith("# "), f"{line.split('=')[0]} has no comment"


def test_mirror_overlay_changes_only_the_download_source():
    base = one(render("base"), "ConfigMap")["data"]
    mirror = one(render("overlays/mirror"), "ConfigMap")
    changed = {k: v for k, v in mirror["data"].items() if base.get(k) != v}
    assert set(changed) == {"GRID_AGENT_DRIVER_URL", "GRID_AGENT_ALLOW_HTTP_MIRROR"}
    assert changed["GRID_AGENT_DRIVER_URL"].endswith("580.105.08-grid-azure.run")
    # The hash-suffixed name changes, and the DaemonSet follows it (so it rolls).
    ds = one(render("overlays/mirror"), "DaemonSet")["spec"]["template"]["spec"]
    refs = {e["configMapRef"]["name"] for c in ds["initContainers"] + ds["containers"]
            for e in c["envFrom"]}
    assert refs == {mirror["metadata"]["name"]}
    assert mirror["metadata"]["name"] != one(render("base"), "ConfigMap")["metadata"]["name"]


def test_exec_probe_overlay_replaces_every_http_probe():
    ds = one(render("overlays/exec-probes"), "DaemonSet")["spec"]["template"]["spec"]
    watch = ds["containers"][0]
    assert watch["args"] == ["watch"]
    probes = {k: watch[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert "httpGet" not in probe, kind
    assert probes["livenessProbe"]["exec"]["command"] == ["grid-agent", "probe", "live"]
    assert probes["startupProbe"]["exec"]["command"] == ["grid-agent", "probe", "live"]
    assert probes["readinessProbe"]["exec"]["command"] == ["grid-agent", "probe", "ready"]


def test_both_kustomizations_name_the_same_image():
    def images(name):
        objs = render(name)
        spec = next(o for o in objs if o["kind"] in ("DaemonSet", "Job"))["spec"]["template"]
        return {c["image"] for c in spec["spec"].get("initContainers", [])
                + spec["spec"]["containers"]}

    assert images("base") == images("oneshot")
    (image,) = images("base")
    assert image.rsplit(":", 1)[1] != "latest"


def test_the_kured_overlay_sets_only_the_reboot_sentinel():
    base = one(render("base"), "ConfigMap")["data"]
    kured = one(render("overlays/kured"), "ConfigMap")["data"]
    assert kured["GRID_AGENT_REBOOT_SENTINEL"] == "/var/run/reboot-required"
    assert base["GRID_AGENT_REBOOT_SENTINEL"] == ""
    assert {k: v for k, v in kured.items() if k != "GRID_AGENT_REBOOT_SENTINEL"} == \
        {k: v for k, v in base.items() if k != "GRID_AGENT_REBOOT_SENTINEL"}
