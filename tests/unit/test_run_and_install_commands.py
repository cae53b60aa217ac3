import pytest

from agent.errors import UnhealthyError
from agent.host.root import HostRoot
from agent.install.commands import install_command, uninstall_command
from agent.run import HealthReport, run_command
from tests.fakes.kit import FakeNode, settings
from tests.fakes.pci import H100


@pytest.fixture
def node(tmp_path):
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/mountinfo").write_text("22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n")
    return FakeNode(HostRoot(tmp_path))


def conf(node):
    return settings(host_root=str(node.root.root))


def healthy(settings):
    return HealthReport(["CHECK  STATUS REASON", "license ok  Licensed"], True, "")


def test_run_prints_progress_result_and_health(node):
    out = []
    outcome = run_command(conf(node), wait_lock=True, dry_run=False, echo=out.append,
                          kit=node.kit(), health=healthy)
    assert outcome.outcome == "installed"
    assert node.lock_args == [(True, 1800.0)]
    assert any(line.startswith("[ 7] installer     changed") for line in out)
    assert "result: driver installed and verified: driver 580.105.08 (proprietary modules), 1 " \
        "GPU(s): 00000000:00:02.0 NVIDIA RTX Pro 6000 Blackwell DC-4-96Q" in out
    assert out[-1] == "license ok  Licensed"


def test_run_on_an_unhealthy_node_is_exit_9_after_the_report(node):
    out = []
    with pytest.raises(UnhealthyError, match="not healthy: license Unlicensed") as err:
        run_command(conf(node), wait_lock=None, dry_run=False, echo=out.append, kit=node.kit(),
                    health=lambda s: HealthReport(["license bad"], False, "license Unlicensed"))
    assert err.value.exit_code == 9
    assert out[-1] == "license bad"


def test_dry_run_prints_the_plan_and_changes_nothing(node):
    out = []
    assert install_command(conf(node), wait_lock=None, dry_run=True, echo=out.append,
                           kit=node.kit()) is None
    assert "dry run, nothing changed" in out[0]
    assert node.lock_args == [] and "run_installer" not in node.names()
    assert not node.root.path("/var/lib/grid-agent/state.json").exists()


def test_run_on_a_node_without_target_says_so(node):
    node.devices = [H100]
    out = []
    run_command(conf(node), wait_lock=None, dry_run=False, echo=out.append, kit=node.kit())
    assert out[0].startswith("nothing to do: no target PCI function")


def test_uninstall_prints_what_changed(node, fp):
    fp.register(["nsenter", "--target", "1", fp.any(min=5), "--uninstall", "--silent",
                 fp.any(min=1, max=1)])  # its private --log-file-name
    install_command(conf(node), wait_lock=None, dry_run=False, echo=print, kit=node.kit())
    out = []
    uninstall_command(conf(node), wait_lock=None, purge=True, echo=out.append, kit=node.kit())
    assert out[0].startswith("uninstall finished; changed: unpublish, unload, uninstaller")
    assert fp.call_count(["nsenter", fp.any()]) == 1
