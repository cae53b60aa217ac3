"""Helpers for the packaging tests: render kustomizations with the real kubectl, read them."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
# Every kustomization a user may apply; each must render and validate.
KUSTOMIZATIONS = ("", "base", "overlays/mirror", "overlays/exec-probes", "overlays/kured",
                  "oneshot")
KUBE_VERSIONS = ("1.32", "1.33", "1.34", "1.35")


@cache
def render_text(kustomization: str) -> str:
    """`kubectl kustomize manifests/<kustomization>`, as the user would run it."""
    proc = subprocess.run(["kubectl", "kustomize", str(MANIFESTS / kustomization)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {kustomization or '.'}: {proc.stderr}"
    return proc.stdout


def render(kustomization: str = "") -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(kustomization)) if doc]


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_names(objects: list[dict]) -> set[str]:
    """Every environment variable name a rendered object sets (ConfigMap keys included)."""
    names: set[str] = set()
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            names |= set(obj.get("data", {}))
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        for container in pod_containers(spec) if spec else ():
            names |= {e["name"] for e in container.get("env", [])}
    return names


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a kustomize env file (comments and blanks skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs
