"""A host command the agent needs is not installed: its step fails naming it, with its class."""

import dataclasses

import pytest

from agent.errors import (
    HostCommandError,
    HostCommandMissing,
    InstallError,
    PreflightError,
)
from agent.host.root import HostRoot
from agent.install import modules, pipeline, uninstall
from tests.fakes.kit import FakeNode, settings
from tests.fakes.runner import FakeRunner
from tests.fakes.tree import Tree


def missing(argv):
    raise HostCommandMissing(argv[0], argv)


def test_the_error_names_the_command_and_the_package_to_install():
    exc = HostCommandMissing("kill", ["kill", "51"])
    assert exc.line() == ("`kill` is not installed on the host (needed for `kill 51`); "
                          "install procps on the host")
    # Not a HostCommandError: no "command failed" handler may turn it into its diagnosis.
    assert not isinstance(exc, HostCommandError)
    step = exc.for_step("stale_unload", InstallError)
    assert step.exit_code == 6 and step.line().startswith("stale_unload: `kill` is not")


def test_missing_kill_is_not_reboot_required(tmp_path):
    host = Tree(tmp_path)
    host.module("nvidia", refcnt=3, version="550.54.15")
    host.process(51, "nvidia-gridd", ("/dev/nvidiactl",))
    runner = FakeRunner().on("kill", effect=missing)
    with pytest.raises(HostCommandMissing) as err:
        modules.unload_stale(host.root, runner, want_version="580.105.08")
    assert err.value.command == "kill"


def test_missing_rmmod_is_not_reboot_required(tmp_path):
    host = Tree(tmp_path)
    host.module("nvidia", refcnt=0, version="550.54.15")
    runner = FakeRunner().on("rmmod", effect=missing)
    with pytest.raises(HostCommandMissing, match="`rmmod` is not installed"):
        modules.unload_stale(host.root, runner, want_version="580.105.08")


@pytest.fixture
def node(tmp_path):
    return FakeNode(HostRoot(tmp_path))


def test_the_step_that_needed_it_fails_with_its_own_exit_code(node):
    def no_kill(root, runner, *, want_version):
        raise HostCommandMissing("kill", ["kill", "51"])

    kit = dataclasses.replace(node.kit(), unload_stale=no_kill)
    with pytest.raises(InstallError) as err:
        pipeline.install(settings(), node.root, object(), kit)
    assert err.value.exit_code == 6
    assert err.value.line() == ("stale_unload: `kill` is not installed on the host (needed for "
                                "`kill 51`); install procps on the host")


def test_a_preflight_command_missing_is_a_preflight_failure(node):
    def no_uname(settings, root, runner):
        raise HostCommandMissing("uname", ["uname", "-r"])

    kit = dataclasses.replace(node.kit(), preflight=no_uname)
    with pytest.raises(PreflightError, match=r"^preflight: `uname` is not installed") as err:
        pipeline.install(settings(), node.root, object(), kit)
    assert err.value.exit_code == 4


def test_uninstall_names_a_missing_kill_with_exit_6(node):
    pipeline.install(settings(), node.root, object(), node.kit())
    node.root.path("/proc/321").mkdir(parents=True)
    node.root.path("/proc/321/comm").write_text("nvidia-gridd\n")
    runner = FakeRunner().on("kill", effect=missing)
    with pytest.raises(InstallError) as err:
        uninstall.uninstall(settings(), node.root, runner, node.kit(), purge=False)
    assert err.value.exit_code == 6
    assert err.value.line() == ("stop_daemons: `kill` is not installed on the host (needed for "
                                "`kill 321`); install procps on the host")
