"""The Dockerfile lints clean and says what it must; the real image builds offline with
buildah and the agent runs inside it (scripts/build-image's smoke run, plus a look inside)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest

from agent import __version__
from tests.packaging.kube import REPO

pytestmark = pytest.mark.packaging

DOCKERFILE = REPO / "container" / "Dockerfile"
COMPILERS = ("gcc", "cc", "c++", "make", "ld", "pip", "pip3")


def stages() -> list[str]:
    """The Dockerfile's stages, each the text from its FROM to the next."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return ["FROM" + part for part in re.split(r"(?m)^FROM", text)[1:]]


def apt_packages(stage: str) -> set[str]:
    found = re.findall(r"apt-get install -y --no-install-recommends ([^&\n]+)", stage)
    return {pkg for line in found for pkg in line.split()}


def test_hadolint_is_clean_at_the_strictest_threshold():
    proc = subprocess.run(["hadolint", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_hadolint_ignore_says_why():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("# ") and "hadolint" not in lines[i - 1], line


def test_base_is_a_pinned_dated_debian_tag():
    base = re.search(r"(?m)^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text()).group(1)
    assert re.fullmatch(r"docker\.io/library/debian:bookworm-\d{8}-slim", base), base
    assert all(s.startswith("FROM ${BASE_IMAGE}") for s in stages())


def test_final_stage_has_the_runtime_and_no_toolchain():
    builder, _driver, final = stages()
    assert "AS builder" in builder.splitlines()[0]
    assert {"python3-pip", "python3-venv"} <= apt_packages(builder)
    packages = apt_packages(final)
    assert {"python3", "util-linux", "libudev1", "kmod", "ca-certificates"} <= packages
    assert not packages & {"build-essential", "gcc", "make", "python3-pip", "python3-dev",
                           "python3-venv"}
    assert "COPY --from=builder /opt/grid-agent /opt/grid-agent" in final
    assert 'ENTRYPOINT ["grid-agent"]' in final
    for key in ("source", "version", "description"):
        assert f"org.opencontainers.image.{key}=" in final


def test_build_context_is_only_the_package():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:][:4] == ["!pyproject.toml", "!README.md", "!agent/",
                                                  "!container/driver/"]


def test_the_driver_stage_verifies_what_it_bakes_and_the_final_stage_takes_only_that():
    _builder, driver, final = stages()
    assert "AS driver" in driver.splitlines()[0]
    assert 'echo "$DRIVER_SHA256  /in/$DRIVER_RUN" > /tmp/driver.sha256' in driver
    assert "sha256sum -c /tmp/driver.sha256" in driver
    assert "COPY --from=driver /out/ /opt/grid-agent/driver/" in final
    assert "/in/" not in final


@pytest.fixture(scope="session")
def image():
    """scripts/build-image, as CI runs it: the base from debootstrap when it is missing."""
    proc = subprocess.run([str(REPO / "scripts" / "build-image")], capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"smoke: grid-agent {__version__} runs; detect --json exit" in proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", "--storage-driver", "vfs", *args], capture_output=True,
                          text=True, timeout=120, check=check)


@pytest.fixture(scope="session")
def container(image):
    ctr = buildah("from", "--quiet", image).stdout.strip()
    yield ctr
    buildah("rm", ctr, check=False)


def run_in(container: str, *argv: str) -> subprocess.CompletedProcess:
    return buildah("run", "--isolation", "chroot", container, "--", *argv, check=False)


@pytest.mark.slow
def test_image_config(image):
    info = json.loads(buildah("inspect", "--type", "image", image).stdout)
    config = info["OCIv1"]["config"]
    assert config["Entrypoint"] == ["grid-agent"] and config.get("User") == "0"
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    assert image.endswith(f":{__version__}")


@pytest.mark.slow
def test_agent_detect_runs_in_the_image(container):
    """No NVIDIA GPU here: exit 3 (not a target) with the JSON still printed."""
    proc = run_in(container, "grid-agent", "--log-level", "error", "detect", "--json")
    assert proc.returncode in (0, 3), proc.stderr
    assert json.loads(proc.stdout)["target_node"] is (proc.returncode == 0)


@pytest.mark.slow
def test_image_has_the_host_tools_and_debians_python(container):
    proc = run_in(container, "sh", "-c",
                  "nsenter --version && modinfo --version && python3 -c "
                  "'import sys, pyudev; print(sys.version_info[:2] == (3, 11))'")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("True")


@pytest.mark.slow
def test_image_has_no_compiler_or_pip(container):
    proc = run_in(container, "sh", "-c", " ; ".join(f"command -v {t}" for t in COMPILERS))
    assert proc.stdout.strip() == "", proc.stdout


def build_driver_stage(context, sha256: str) -> subprocess.CompletedProcess:
    base = re.search(r"(?m)^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text()).group(1)
    return subprocess.run(
        ["buildah", "--storage-driver", "vfs", "bud", "--isolation", "chroot", "--quiet",
         "--target", "driver", "--build-arg", f"BASE_IMAGE={base}",
         "--build-arg", "DRIVER_RUN=NVIDIA-Linux-x86_64-test.run",
         "--build-arg", f"DRIVER_SHA256={sha256}", "-f", str(DOCKERFILE), "-t",
         "localhost/grid-driver-agent-driver-test", str(context)],
        capture_output=True, text=True, timeout=300, check=False)


def test_the_build_refuses_a_baked_installer_whose_hash_differs(image, tmp_path):
    """The driver stage alone (the base is present once `image` built): right hash, wrong hash."""
    (tmp_path / "container" / "driver").mkdir(parents=True)
    data = b"#!/bin/sh\necho not really a driver\n"
    (tmp_path / "container" / "driver" / "NVIDIA-Linux-x86_64-test.run").write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    try:
        ok = build_driver_stage(tmp_path, good)
        assert ok.returncode == 0, ok.stderr[-2000:]
        bad = build_driver_stage(tmp_path, "0" * 64)
        assert bad.returncode != 0, bad.stderr[-2000:]
    finally:
        buildah("rmi", "localhost/grid-driver-agent-driver-test", check=False)
