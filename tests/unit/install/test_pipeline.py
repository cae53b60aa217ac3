import shutil

import pytest
from structlog.testing import capture_logs

from agent.driver.record import read_record
from agent.errors import InstallError, PreflightError, VerifyError
from agent.host.root import HostRoot
from agent.install import pipeline
from tests.fakes.kit import RUN_PATH, FakeNode, release, settings
from tests.fakes.pci import H100

# The fast path's look is one snapshot (uname -r, nvidia-smi, -q -x); verify is a fresh one.
FULL = ["snapshot", "preflight", "ensure_installer", "ensure_build_deps", "remove_marker",
        "unload_stale",
        "ensure_nouveau_disabled", "run_installer", "load_modules", "kernel_log",
        "ensure_persistenced",
        "ensure_gridd_conf", "ensure_gridd_running", "snapshot", "publish"]
STEPS = ["fast_path", "preflight", "download", "packages", "stale_unload", "nouveau",
         "installer", "load", "persistence", "licensing", "verify", "publish", "record",
         "prebuild"]


@pytest.fixture
def node(tmp_path):
    return FakeNode(HostRoot(tmp_path))


def install(node, **env):
    return pipeline.install(settings(**env), node.root, object(), node.kit())


def step_events(logs):
    return [(e["event"], e["name"]) for e in logs if e["event"].startswith("step_")]


def test_not_a_target_node_changes_nothing_and_takes_no_lock(node):
    node.devices = [H100]
    with capture_logs() as logs:
        out = install(node)
    assert out.outcome == "not_target"
    assert "no target PCI function (10de:2bb5)" in out.reason
    assert node.calls == [] and node.lock_args == []
    assert [e["event"] for e in logs] == ["not_a_target_node"]


def test_fresh_install_runs_every_step_in_order_and_records(node):
    with capture_logs() as logs:
        out = install(node)
    assert out.outcome == "installed"
    assert node.names() == FULL
    assert node.calls[7] == ("run_installer", RUN_PATH,
                             "proprietary")
    assert [n for ev, n in step_events(logs) if ev == "step_started"] == STEPS
    finished = {e["name"]: e["changed"] for e in logs if e["event"] == "step_finished"}
    assert finished["installer"] is True and finished["fast_path"] is False
    assert node.marker and node.mounted
    rec = read_record(node.root)
    assert (rec.outcome, rec.exit_code, rec.module_type, rec.kernel_release) == (
        "installed", 0, "proprietary", node.kernel)
    assert node.lock_args == [(False, None)]


def test_second_run_takes_the_fast_path(node):
    install(node)
    node.calls.clear()
    with capture_logs() as logs:
        out = install(node)
    assert out.outcome == "fast_path"
    assert node.names() == ["snapshot", "publish"]
    assert node.calls[0] == ("snapshot", "kernel")
    assert read_record(node.root).outcome == "fast_path"
    assert any(e["event"] == "fast_path_taken" for e in logs)


def test_reboot_with_autoload_republishes_on_the_fast_path(node):
    install(node)
    node.reboot(autoload=True)
    node.calls.clear()
    assert install(node).outcome == "fast_path"
    assert "run_installer" not in node.names()
    assert node.marker and node.mounted


def test_reboot_without_autoload_loads_without_rebuilding(node):
    install(node)
    node.reboot(autoload=False)
    node.calls.clear()
    with capture_logs() as logs:
        assert install(node).outcome == "installed"
    assert "run_installer" not in node.names() and "load_modules" in node.names()
    assert {e["name"]: e["changed"] for e in logs if e["event"] == "step_finished"}[
        "installer"] is False
    assert node.marker


@pytest.mark.parametrize("change", ["version", "kernel", "type", "failed"])
def test_fast_path_declined_when_anything_differs(node, change):
    install(node)
    if change == "version":
        node.release = release(version="595.58.03-grid-azure", sha256="cd" * 32)
    elif change == "kernel":
        node.kernel = "6.8.0-1030-azure"
    elif change == "type":
        node.release = release(module_type="open")
    else:
        pipeline.Flow(settings(), node.root, None, node.kit(),
                      pipeline.resolve_pin(settings(), node.kit())).record("failed", 6)
    node.calls.clear()
    with capture_logs() as logs:
        install(node)
    assert any(e["event"] == "fast_path_declined" for e in logs)
    assert "preflight" in node.names()


def test_verify_failure_is_exit_7_recorded_and_never_published(node):
    node.smi_exit = 14
    node.marker = True  # left by an older, verified driver
    with pytest.raises(VerifyError) as err:
        install(node)
    assert err.value.exit_code == 7
    assert "publish" not in node.names()
    assert not node.marker
    rec = read_record(node.root)
    assert (rec.outcome, rec.exit_code) == ("failed", 7)


def test_fast_path_verify_failure_reruns_host_steps_without_rebuilding(node):
    install(node)
    node.smi_exit = 14
    node.calls.clear()
    with pytest.raises(VerifyError):
        install(node)
    assert "run_installer" not in node.names() and "unload_stale" in node.names()
    assert "ensure_gridd_running" in node.names()
    assert (read_record(node.root).outcome, node.state.loaded) == ("failed", True)
    node.smi_exit = 0  # e.g. gridd came up: the next run needs no rebuild either
    node.calls.clear()
    assert install(node).outcome == "fast_path"


def test_preflight_failure_changes_nothing_and_records_failure(node):
    node.preflight_error = "Secure Boot is enabled"
    with pytest.raises(PreflightError):
        install(node)
    assert node.names() == ["snapshot", "preflight"]
    assert read_record(node.root).outcome == "failed"


def test_nouveau_that_cannot_unload_means_reboot_required(node):
    node.reboot_for_nouveau = True
    with pytest.raises(InstallError, match="reboot required"):
        install(node)
    assert "run_installer" not in node.names()


def test_wait_lock_waits_bounded_by_the_install_timeout(node):
    install(node, wait_lock="true", install_timeout="60")
    assert node.lock_args == [(True, 60.0)]


def test_progress_sees_each_step(node):
    seen = []
    pipeline.install(settings(), node.root, object(), node.kit(),
                     progress=lambda phase, name, changed: seen.append((phase, name)))
    assert [n for p, n in seen if p == "started"] == STEPS


def test_module_type_change_unloads_the_same_version_before_reinstalling(node):
    install(node)
    assert node.state.module_type == "proprietary"
    node.calls.clear()
    assert install(node, kernel_module_type="open").outcome == "installed"
    names = node.names()
    assert names.index("unload_stale") < names.index("run_installer")
    assert node.state.module_type == "open"
    assert read_record(node.root).module_type == "open"


def test_a_built_driver_needs_no_download(node):
    install(node)
    node.reboot(autoload=False)
    node.calls.clear()
    install(node)
    assert "ensure_installer" not in node.names()


def test_the_kernels_compiler_reaches_the_installer(node):
    from types import SimpleNamespace

    seen = []
    real = node.run_installer

    def run_installer(root, runner, run_path, module_type, *, timeout, cc=None):
        seen.append(cc)
        return real(root, runner, run_path, module_type, timeout=timeout)

    kit = node.kit().__class__(**{**node.kit().__dict__, "run_installer": run_installer,
                                  "ensure_compiler": lambda root, runner, release, *, lock_wait:
                                  SimpleNamespace(cc="gcc-12", changed=True)})
    with capture_logs() as logs:
        pipeline.install(settings(), node.root, object(), kit)
    assert seen == ["gcc-12"]
    finished = {e["name"]: e["changed"] for e in logs if e["event"] == "step_finished"}
    assert finished["packages"] is True


def test_a_failure_is_recorded_then_reported_before_the_lock_is_let_go(node):
    import contextlib
    import dataclasses

    seen = []

    @contextlib.contextmanager
    def lock(root, *, wait, timeout=None):
        seen.append("locked")
        try:
            yield
        finally:
            seen.append("released")

    def report(line):
        seen.append(("report", "Secure Boot is enabled" in line, read_record(node.root).outcome))

    kit = dataclasses.replace(node.kit(), lock=lock)
    node.preflight_error = "Secure Boot is enabled"
    with pytest.raises(PreflightError):
        pipeline.install(settings(), node.root, object(), kit, report=report)
    assert seen == ["locked", ("report", True, "failed"), "released"]


def test_a_staged_upgrade_reports_its_line_before_the_wait_and_replaces_it_once_done(node):
    from agent.install import upgrade
    from tests.fakes.runner import FakeRunner
    from tests.fakes.tree import Tree

    install(node)  # the old driver, loaded
    host = Tree(node.root.path("/"))
    host.module("nvidia", refcnt=1, version=node.state.version)
    host.process(4242, "cuda-app", ("/dev/nvidia0",))  # a CUDA process holds the GPU
    node.release = release("580.126.09-grid-azure")
    lines = []

    def report(line):
        lines.append(line)
        if "staged, waiting for reboot" in line:  # as the kubelet would keep it; then a drain
            assert upgrade.staged_info(node.root)["version"] == "580.126.09-grid-azure"
            shutil.rmtree(node.root.path("/proc/4242"))

    runner = FakeRunner().on("systemctl")
    env = {"reboot_sentinel": "/var/run/reboot-required", "watch_interval": "0.1"}
    out = pipeline.install(settings(**env), node.root, runner, node.kit(), report=report)
    assert out.outcome == "installed" and len(lines) == 2
    assert lines[0].startswith("upgrade to 580.126.09-grid-azure (from 580.105.08-grid-azure) "
                               "staged, waiting for reboot: the loaded NVIDIA driver is in use")
    assert "/var/run/reboot-required is written" in lines[0]
    assert lines[1].startswith("upgrade to 580.126.09-grid-azure installed without a reboot")
    assert upgrade.staged_info(node.root) is None
