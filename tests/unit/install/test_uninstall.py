import pytest

from agent.driver.record import read_record
from agent.errors import InstallError
from agent.host.root import HostRoot
from agent.install import pipeline
from agent.install import uninstall as un
from tests.fakes.kit import NOTHING_LOADED, RUN_PATH, FakeNode, settings
from tests.fakes.runner import FakeRunner
from tests.fakes.tree import Tree


def runner_with(rcs=None, *, root=None, log_text=None, before=None) -> FakeRunner:
    """Host commands by argv prefix: rc per command (0 otherwise), everything recorded; with
    `root` and `log_text`, writes the log its argv names first, as the uninstaller does
    (links followed)."""
    def effect(argv):
        if before is not None:
            before()
        logs = [a.split("=", 1)[1] for a in argv if a.startswith("--log-file-name=")]
        if log_text is not None and logs:
            root.path(logs[0]).write_text(log_text)

    runner = FakeRunner()
    for prefix, rc in (rcs or {}).items():
        runner.on(*prefix, rc=rc, effect=effect)
    return runner.on(effect=effect)


def put(root, path, text="x", mode=0o755):
    Tree(root.root).write(path, text, mode)


@pytest.fixture
def node(tmp_path):
    n = FakeNode(HostRoot(tmp_path))
    pipeline.install(settings(), n.root, object(), n.kit())
    put(n.root, "/usr/bin/nvidia-smi")
    return n


def test_uninstall_with_cached_run_then_again_changes_nothing(node):
    runner = runner_with()
    report = un.uninstall(settings(), node.root, runner, node.kit(), purge=False)
    assert report.changed == ["unpublish", "unload", "uninstaller", "record"]
    assert not node.state.loaded
    (_sh, private, *args), = [a for a in runner.calls if a[0] == "sh"]
    # What ran is a verified private copy beside the cache entry, gone after the run.
    assert private.startswith("/var/cache/grid-agent/.exec-")
    assert private.endswith(RUN_PATH.rsplit("/", 1)[1])
    stage = private.rsplit("/", 1)[0]
    assert args == ["--uninstall", "--silent", f"--log-file-name={stage}/nvidia-uninstall.log"]
    assert not node.root.path(private).parent.exists()
    assert read_record(node.root) is None and not node.marker
    assert "unload_stale" in node.names()
    assert node.root.path("/var/cache/grid-agent").iterdir()  # kept without --purge
    node.root.path("/usr/bin/nvidia-smi").unlink()  # what the uninstaller removes
    again = un.uninstall(settings(), node.root, runner_with(), node.kit(), purge=True)
    assert again.changed == ["purge"]
    assert list(node.root.path("/var/cache/grid-agent").iterdir()) == []
    assert "already uninstalled" not in again.lines()[0]


def test_prefers_the_installed_uninstaller(node):
    put(node.root, un.UNINSTALLER)
    runner = runner_with(root=node.root, log_text="Uninstallation is complete\n")
    un.uninstall(settings(), node.root, runner, node.kit(), purge=False)
    (*argv, log_flag), = [a for a in runner.calls if a[0] == un.UNINSTALLER]
    assert argv == [un.UNINSTALLER, "--silent"]
    # Its log too goes to a fresh root-only directory first (gone after), then /var/log.
    assert log_flag.startswith("--log-file-name=/var/cache/grid-agent/.exec-")
    assert log_flag.endswith("/nvidia-uninstall.log")
    assert not node.root.path(log_flag.split("=", 1)[1]).parent.exists()
    published = node.root.path(un.UNINSTALL_LOG)
    assert published.read_text() == "Uninstallation is complete\n"
    assert published.stat().st_mode & 0o777 == 0o644


def test_modules_in_use_stop_before_the_uninstaller(node):
    def busy(root, runner, *, want_version):
        raise InstallError("reboot required: nvidia is in use (pid 42 (python3)); it cannot")

    kit = node.kit().__class__(**{**node.kit().__dict__, "unload_stale": busy})
    runner = runner_with()
    with pytest.raises(InstallError, match=r"pid 42 \(python3\)\); the hand-off is withdrawn"):
        un.uninstall(settings(), node.root, runner, kit, purge=False)
    assert not node.marker
    assert not any(a[0] == "sh" for a in runner.calls)
    assert read_record(node.root) is not None


def test_uninstaller_failure_is_exit_6_with_this_runs_error_lines(node):
    put(node.root, un.UNINSTALL_LOG, "ERROR: an earlier run's line\n", 0o644)
    runner = runner_with({("sh",): 1}, root=node.root,
                    log_text="ERROR: Failed to remove /usr/bin/nvidia-smi\n")
    with pytest.raises(InstallError, match="Failed to remove") as err:
        un.uninstall(settings(), node.root, runner, node.kit(), purge=False)
    assert err.value.exit_code == 6
    assert "earlier run" not in err.value.message
    assert node.root.path(un.UNINSTALL_LOG + ".old").read_text() == \
        "ERROR: an earlier run's line\n"


@pytest.mark.parametrize("installed_uninstaller", [False, True])
def test_a_link_planted_at_the_uninstall_log_is_never_written_through(node, tmp_path,
                                                                     installed_uninstaller):
    if installed_uninstaller:
        put(node.root, un.UNINSTALLER)
    victim = tmp_path / "victim"
    victim.write_text("root:x:0:\n")
    log = node.root.path(un.UNINSTALL_LOG)
    log.parent.mkdir(parents=True, exist_ok=True)

    def plant():  # a syslog-group user plants a link while the uninstaller runs
        log.unlink(missing_ok=True)
        log.symlink_to(victim)

    runner = runner_with({("sh",): 1, (un.UNINSTALLER,): 1}, root=node.root, before=plant,
                    log_text="ERROR: Failed to remove /usr/bin/nvidia-smi\n")
    with pytest.raises(InstallError, match="Failed to remove"):
        un.uninstall(settings(), node.root, runner, node.kit(), purge=False)
    assert victim.read_text() == "root:x:0:\n"  # the link was replaced, never written through
    assert not log.is_symlink()
    assert log.read_text() == "ERROR: Failed to remove /usr/bin/nvidia-smi\n"


def test_systemd_units_are_disabled_and_stopped(node):
    node.root.path("/run/systemd/system").mkdir(parents=True)
    runner = runner_with({("systemctl", "is-enabled", "--quiet", "nvidia-gridd.service"): 1,
                     ("systemctl", "is-active", "--quiet", "nvidia-gridd.service"): 1})
    assert un.stop_daemons(node.root, runner) is True
    assert ["systemctl", "disable", "--now", "nvidia-persistenced.service"] in runner.calls
    assert ["systemctl", "disable", "--now", "nvidia-gridd.service"] not in runner.calls


def test_without_systemd_the_daemon_processes_are_killed(node):
    put(node.root, "/proc/321/comm", "nvidia-gridd\n", 0o644)
    put(node.root, "/proc/322/comm", "nvidia-persiste\n", 0o644)  # truncated to 15 chars
    put(node.root, "/proc/400/comm", "bash\n", 0o644)
    runner = runner_with()
    assert un.stop_daemons(node.root, runner, wait=0) is True
    assert runner.calls == [["kill", "322"], ["kill", "321"]]  # persistenced, then gridd
    assert un.stop_daemons(HostRoot(node.root.path("/nonexistent")), runner_with()) is False


def test_nothing_installed_runs_no_uninstaller(tmp_path):
    n = FakeNode(HostRoot(tmp_path), state=NOTHING_LOADED)
    runner = runner_with()
    report = un.uninstall(settings(), n.root, runner, n.kit(), purge=False)
    assert report.changed == [] and runner.calls == []
