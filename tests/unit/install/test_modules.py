import pytest
from structlog.testing import capture_logs

from agent.errors import InstallError
from agent.install import modules
from tests.fakes.runner import FakeRunner
from tests.fakes.tree import Tree

OLD = "550.54.15"
NEW = "580.105.08"


@pytest.fixture
def host(tmp_path):
    return Tree(tmp_path)


def old_stack(host, *, drm_refcnt=0):
    """An older driver loaded as the installer leaves it: uvm and modeset hold nvidia."""
    host.module("nvidia", refcnt=2, holders=("nvidia_modeset", "nvidia_uvm"), version=OLD)
    host.module("nvidia_uvm", refcnt=0)
    host.module("nvidia_modeset", refcnt=1, holders=("nvidia_drm",))
    host.module("nvidia_drm", refcnt=drm_refcnt)


def rmmod_runner(host):
    return FakeRunner().on("rmmod", effect=lambda argv: host.unload(argv[1]))


def test_nothing_loaded_is_not_stale(host):
    runner = FakeRunner()
    with capture_logs() as logs:
        assert modules.unload_stale(host.root, runner, want_version=NEW) is False
    assert runner.calls == []
    assert logs[-1]["changed"] is False


def test_the_wanted_version_loaded_is_left_alone(host):
    host.module("nvidia", refcnt=3, holders=("nvidia_uvm",), version=NEW)
    runner = FakeRunner()
    assert modules.unload_stale(host.root, runner, want_version=NEW) is False
    assert runner.calls == []


def test_unused_old_driver_is_unloaded_in_dependency_order(host):
    old_stack(host)
    runner = rmmod_runner(host)
    with capture_logs() as logs:
        assert modules.unload_stale(host.root, runner, want_version=NEW) is True
    # nvidia_peermem is not loaded, so it is not touched; never `rmmod -f`.
    assert runner.commands() == ["rmmod nvidia_drm", "rmmod nvidia_modeset",
                                 "rmmod nvidia_uvm", "rmmod nvidia"]
    assert not host.root.path("/sys/module/nvidia").exists()
    assert logs[-1]["event"] == "stale_driver_unloaded" and logs[-1]["changed"] is True


def test_a_process_holding_the_gpu_means_reboot_required(host):
    old_stack(host)
    host.process(4242, "python3", ("/dev/null", "/dev/nvidia0", "/dev/nvidiactl"))
    host.process(4243, "bash", ("/dev/pts/0", "/usr/bin/nvidia-smi"))
    host.process(4244, "dcgm", ("/dev/nvidia-caps/nvidia-cap2",))
    runner = FakeRunner()
    with pytest.raises(InstallError, match=r"reboot required.*4242 \(python3\)") as err:
        modules.unload_stale(host.root, runner, want_version=NEW)
    assert "4243" not in err.value.message and OLD in err.value.message
    assert "4244 (dcgm)" in err.value.message
    assert err.value.exit_code == 6
    assert runner.calls == []


def held_by_daemons(host):
    old_stack(host)
    host.process(50, "nvidia-persiste", ("/dev/nvidiactl", "/dev/nvidia0"))
    host.process(51, "nvidia-gridd", ("/dev/nvidiactl",))
    host.write("/sys/module/nvidia/refcnt", "5\n")  # two holders + three open files


def gone(host, *pids):
    def effect(argv):
        import shutil

        for pid in pids:
            shutil.rmtree(host.root.path(f"/proc/{pid}"))
        host.write("/sys/module/nvidia/refcnt", "2\n")
    return effect


def test_the_old_drivers_own_daemons_are_stopped_then_it_is_unloaded(host):
    # After a drain (or a reboot) only persistenced and gridd still hold the old driver.
    held_by_daemons(host)
    host.mkdir("/run/systemd/system")
    host.write("/lib/systemd/system/nvidia-persistenced.service", "[Service]\n")
    runner = rmmod_runner(host).on("systemctl", "stop", effect=gone(host, 50)).on(
        "kill", effect=gone(host, 51))
    with capture_logs() as logs:
        assert modules.unload_stale(host.root, runner, want_version=NEW) is True
    assert runner.commands()[:2] == ["systemctl stop nvidia-persistenced.service", "kill 51"]
    assert runner.commands()[-1] == "rmmod nvidia"
    assert logs[-1]["daemons_stopped"] == ["nvidia-persistenced", "nvidia-gridd"]


def test_daemons_are_left_alone_when_a_workload_holds_the_gpu(host):
    held_by_daemons(host)
    host.process(4242, "python3", ("/dev/nvidia0",))
    runner = FakeRunner()
    with pytest.raises(InstallError, match=r"4242 \(python3\)") as err:
        modules.unload_stale(host.root, runner, want_version=NEW)
    assert "nvidia-persiste" not in err.value.message  # only who blocks, not our daemons
    assert runner.calls == []


def test_a_daemon_that_will_not_die_is_named(host):
    held_by_daemons(host)
    runner = FakeRunner().on("kill")
    with pytest.raises(InstallError, match=r"pid 50 \(nvidia-persiste\) has /dev/nvidia"):
        modules.unload_stale(host.root, runner, want_version=NEW, daemon_wait=0)
    assert runner.commands() == ["kill 50", "kill 51"]


def test_a_module_in_use_means_reboot_required_and_nothing_is_unloaded(host):
    old_stack(host, drm_refcnt=1)  # e.g. a framebuffer console on nvidia_drm
    runner = FakeRunner()
    with pytest.raises(InstallError, match=r"reboot required.*nvidia_drm has refcnt 1"):
        modules.unload_stale(host.root, runner, want_version=NEW)
    assert runner.calls == []


def test_a_foreign_holder_module_means_reboot_required(host):
    host.module("nvidia", refcnt=1, holders=("gdrdrv",), version=OLD)
    with pytest.raises(InstallError, match=r"held by module.*gdrdrv"):
        modules.unload_stale(host.root, FakeRunner(), want_version=NEW)


def test_rmmod_failure_names_the_kernel_reason(host):
    host.module("nvidia", refcnt=0, version=OLD)
    runner = FakeRunner().on("rmmod", rc=1, stderr="rmmod: ERROR: Module nvidia is in use\n")
    with pytest.raises(InstallError, match=r"rmmod nvidia failed: rmmod: ERROR: Module nvidia"):
        modules.unload_stale(host.root, runner, want_version=NEW)


def test_unknown_loaded_version_counts_as_stale(host):
    host.module("nvidia", refcnt=0)
    runner = rmmod_runner(host)
    assert modules.unload_stale(host.root, runner, want_version=NEW) is True
    assert runner.commands() == ["rmmod nvidia"]


def nodes(host, *names):
    for name in names:
        host.write(f"/dev/{name}")


def load_runner(host):
    def modprobe(argv):
        host.module("nvidia", refcnt=2, version=NEW)
        host.module("nvidia_uvm")
        host.module("nvidia_modeset")

    def nvidia_modprobe(argv):
        nodes(host, *(("nvidia-uvm", "nvidia-uvm-tools") if "-u" in argv
                      else ("nvidiactl", "nvidia0")))

    return (FakeRunner().on("modprobe", effect=modprobe)
            .on("nvidia-modprobe", effect=nvidia_modprobe))


def test_load_uses_modprobe_a_and_creates_every_device_file(host):
    runner = load_runner(host)
    with capture_logs() as logs:
        assert modules.load_modules(host.root, runner) is True
    assert runner.calls == [["modprobe", "-a", "nvidia", "nvidia-uvm", "nvidia-modeset"],
                            ["nvidia-modprobe", "-c0"], ["nvidia-modprobe", "-u", "-c0"]]
    assert logs[-1]["changed"] is True
    # Second run: everything in place, no host process at all.
    again = FakeRunner()
    assert modules.load_modules(host.root, again) is False
    assert again.calls == []


def test_loaded_but_uvm_nodes_missing_runs_only_nvidia_modprobe(host):
    for name in ("nvidia", "nvidia_uvm", "nvidia_modeset"):
        host.module(name)
    nodes(host, "nvidiactl", "nvidia0")
    runner = load_runner(host)
    assert modules.load_modules(host.root, runner) is True
    assert runner.commands() == ["nvidia-modprobe -c0", "nvidia-modprobe -u -c0"]


def test_device_files_still_missing_after_load_is_an_error(host):
    runner = FakeRunner().on("modprobe").on("nvidia-modprobe")
    with pytest.raises(InstallError, match=r"device files missing.*/dev/nvidia-uvm"):
        modules.load_modules(host.root, runner)


def test_modprobe_failure_carries_its_own_lines(host):
    runner = FakeRunner().on("modprobe", rc=1,
                             stderr="modprobe: ERROR: could not insert 'nvidia': No such device\n")
    with pytest.raises(InstallError, match=r"could not insert 'nvidia': No such device"):
        modules.load_modules(host.root, runner)


def test_persistenced_with_systemd_writes_a_unit_and_enables_it(host):
    host.mkdir("/run/systemd/system")
    runner = FakeRunner().on("systemctl")
    assert modules.ensure_persistenced(host.root, runner) is True
    unit = host.read("/etc/systemd/system/nvidia-persistenced.service")
    assert "ExecStart=/usr/bin/nvidia-persistenced" in unit and "WantedBy=multi-user" in unit
    assert runner.commands() == ["systemctl daemon-reload",
                                 "systemctl enable --now nvidia-persistenced.service"]


def test_persistenced_unit_enabled_and_active_changes_nothing(host):
    host.mkdir("/run/systemd/system")
    host.write("/lib/systemd/system/nvidia-persistenced.service", "[Service]\n")
    runner = FakeRunner().on("systemctl")
    assert modules.ensure_persistenced(host.root, runner) is False
    assert runner.commands() == ["systemctl is-enabled --quiet nvidia-persistenced.service",
                                 "systemctl is-active --quiet nvidia-persistenced.service"]
    assert not host.root.path("/etc/systemd/system/nvidia-persistenced.service").exists()


def test_persistenced_unit_inactive_is_enabled_now(host):
    host.mkdir("/run/systemd/system")
    host.write("/usr/lib/systemd/system/nvidia-persistenced.service", "[Service]\n")
    runner = FakeRunner().on("systemctl", "is-active", rc=3).on("systemctl")
    assert modules.ensure_persistenced(host.root, runner) is True
    assert runner.commands()[-1] == "systemctl enable --now nvidia-persistenced.service"


def test_persistenced_without_systemd_starts_once(host):
    runner = FakeRunner().on("nvidia-persistenced",
                             effect=lambda argv: host.process(77, "nvidia-persiste"))
    assert modules.ensure_persistenced(host.root, runner) is True
    assert modules.ensure_persistenced(host.root, runner) is False
    assert runner.commands() == ["nvidia-persistenced"]
