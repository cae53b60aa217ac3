"""The module type's choice and the requires-open fallback: through the install, and alone."""

import pytest
from structlog.testing import capture_logs

from agent.driver.record import read_record
from agent.errors import InstallError
from agent.host.root import HostRoot
from agent.install import moduletype, pipeline
from agent.install.flow import Flow
from agent.install.installer import InstallerFailed
from agent.install.pin import resolve_pin
from tests.fakes.kit import RUN_PATH, FakeNode, settings


@pytest.fixture
def node(tmp_path):
    return FakeNode(HostRoot(tmp_path))


def install(node, **env):
    return pipeline.install(settings(**env), node.root, object(), node.kit())


def flow_after_installing(node, requested="proprietary"):
    """A flow as the installer step leaves it: the type `requested` chosen and installed."""
    config = settings(kernel_module_type=requested)
    kit = node.kit()
    flow = Flow(config, node.root, object(), kit, resolve_pin(config, kit),
                install_reason="not installed", run_path=RUN_PATH)
    flow.choice = moduletype.choose(flow)
    moduletype.install(flow, flow.choice.module_type)
    node.calls.clear()
    return flow


def test_requires_open_falls_back_once_and_warns_naming_the_variable(node):
    node.requires_open = True
    with capture_logs() as logs:
        out = install(node)
    assert out.outcome == "installed"
    installs = [c for c in node.calls if c[0] == "run_installer"]
    assert [c[2] for c in installs] == ["proprietary", "open"]
    warning, = [e for e in logs if e["event"] == "module_type_fallback"]
    assert warning["log_level"] == "warning"
    assert "GRID_AGENT_KERNEL_MODULE_TYPE" in warning["hint"]
    assert read_record(node.root).module_type == "open"


def test_proprietary_strict_refuses_the_fallback(node):
    node.requires_open = True
    with pytest.raises(InstallError, match="proprietary-strict forbids") as err:
        install(node, kernel_module_type="proprietary-strict")
    assert err.value.exit_code == 6
    assert [c[2] for c in node.calls if c[0] == "run_installer"] == ["proprietary"]
    rec = read_record(node.root)
    assert (rec.outcome, rec.exit_code) == ("failed", 6)
    assert not node.marker


def test_auto_asks_the_installer(node):
    install(node, kernel_module_type="auto")
    assert ("run_installer", RUN_PATH, "open") in node.calls
    assert "recommended_type" in node.names()


def test_an_installer_error_naming_the_open_modules_is_no_signal(node):
    """The real installer never refuses -M proprietary: only the kernel's NVRM line counts."""
    def refusing(root, runner, run_path, module_type, *, timeout):
        node.calls.append(("run_installer", run_path, module_type))
        raise InstallerFailed("driver installer failed", [
            "ERROR: The NVIDIA GPU 0000:00:02.0 (PCI ID: 10de:2bb5) installed in this "
            "system requires use of the NVIDIA open kernel modules."])

    kit = node.kit().__class__(**{**node.kit().__dict__, "run_installer": refusing})
    with pytest.raises(InstallerFailed):
        pipeline.install(settings(kernel_module_type="proprietary"), node.root, object(), kit)
    assert [c[2] for c in node.calls if c[0] == "run_installer"] == ["proprietary"]
    assert "kernel_log" in node.names()  # asked, and the kernel said nothing


def test_auto_without_a_recommendation_takes_open_for_branch_580(node):
    node.recommended = None
    install(node, kernel_module_type="auto")
    assert [c[2] for c in node.calls if c[0] == "run_installer"] == ["open"]


def test_a_failure_of_open_is_the_steps_own(node):
    flow = flow_after_installing(node, requested="open")
    failed = InstallError("modprobe failed")
    with pytest.raises(InstallError) as err:
        moduletype.open_instead(flow, failed)
    assert err.value is failed and node.calls == []


def test_a_failure_of_proprietary_without_the_nvrm_line_is_the_steps_own(node):
    flow = flow_after_installing(node)
    failed = InstallError("modprobe failed")
    with pytest.raises(InstallError) as err:
        moduletype.open_instead(flow, failed)
    assert err.value is failed and node.names() == ["kernel_log"]


def test_an_installer_step_fallback_installs_open_and_leaves_the_load_to_its_step(node):
    flow = flow_after_installing(node)
    node.requires_open = True
    moduletype.open_instead(flow, InstallerFailed("driver installer failed", []))
    assert node.names() == ["kernel_log", "unload_stale", "run_installer"]
    assert node.calls[-1][2] == "open" and flow.module_type == "open"


def test_a_load_step_fallback_loads_again_with_the_step_given(node):
    flow = flow_after_installing(node)
    node.requires_open = True
    loads = []
    moduletype.open_instead(flow, InstallError("modprobe failed"),
                            load=lambda f: loads.append(f.module_type) or True)
    assert loads == ["open"]


def test_a_proprietary_module_that_loads_without_a_gpu_is_refused(node):
    flow = flow_after_installing(node)
    node.requires_open = True
    with pytest.raises(InstallError, match="did not initialise") as err:
        moduletype.refuse_gpuless_proprietary(flow)
    assert "GRID_AGENT_KERNEL_MODULE_TYPE=open" in err.value.remedy


@pytest.mark.parametrize("change", ["open", "not_built_now"])
def test_only_a_proprietary_module_built_now_is_judged_by_the_kernel_log(node, change):
    flow = flow_after_installing(node)
    node.requires_open = True
    if change == "open":
        flow.module_type = "open"
    else:
        flow.install_reason = None
    moduletype.refuse_gpuless_proprietary(flow)
    assert "kernel_log" not in node.names()
