"""Host-preparation steps against the simulated node: real nsenter, real mounts, real locks."""

import os
import shutil
import time

import pytest
import structlog
from tenacity.wait import wait_none

from agent.driver.state import read_module
from agent.errors import InstallError, PreflightError
from agent.host.runner import HostRunner
from agent.install import installer, licensing, modules, nouveau, packages, preflight
from agent.settings import build_settings

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


@pytest.fixture(autouse=True)
def _fresh_logging():
    # These steps log in this process; a CLI test earlier in the session may have left
    # structlog printing to its CliRunner's stream, closed by now.
    structlog.reset_defaults()


def settings_for(node, **env):
    return build_settings({"host_root": str(node.root.root), "host_pid": str(node.pid)}, env)


class Counting(HostRunner):
    """The real runner, remembering each argv (how many host processes a step cost)."""

    def __init__(self, pid):
        super().__init__(pid=pid)
        self.argvs = []

    def run(self, argv, **kw):
        self.argvs.append(list(argv))
        return super().run(argv, **kw)


@pytest.fixture
def runner(simnode):
    return Counting(simnode.pid)


def test_preflight_on_a_healthy_node_asks_the_host(simnode, runner):
    found = preflight.run_preflight(settings_for(simnode), simnode.root, runner)
    assert (found.kernel_release, found.os_id, found.os_version) == (
        simnode.kernel_release, "ubuntu", "22.04")
    assert found.secure_boot == "disabled" and found.headers is True


def test_secure_boot_is_refused(simnode, runner):
    simnode.set_scenarios("secure-boot")
    with pytest.raises(PreflightError, match="Secure Boot is enabled") as err:
        preflight.run_preflight(settings_for(simnode), simnode.root, runner)
    assert err.value.exit_code == 4


def test_mokutil_answers_when_the_efi_variable_is_unreadable(simnode, runner, tmp_path):
    simnode.set_scenarios("secure-boot")
    elsewhere = preflight.HostRoot(tmp_path)  # no efivars there: the host's mokutil decides
    assert preflight.secure_boot_state(elsewhere, runner) is True
    assert runner.argvs == [["mokutil", "--sb-state"]]


def test_private_run_is_refused(simnode):
    simnode.exec(["mount", "--make-private", "/run"])
    with pytest.raises(PreflightError, match="host /run is not a shared mount"):
        preflight.check_run_shared(simnode.root)


def test_another_os_is_refused(simnode, runner):
    simnode.path("/etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
                                              "ID=debian\nVERSION_ID=\"12\"\n")
    with pytest.raises(PreflightError, match="unsupported host OS 'Debian GNU/Linux 12"):
        preflight.run_preflight(settings_for(simnode), simnode.root, runner)


def test_nsenter_without_privilege_says_privileged_hostpid(simnode, tmp_path):
    # nsenter run as nobody: the kernel's own EPERM, turned into the remedy.
    wrapper = tmp_path / "nsenter-as-nobody"
    wrapper.write_text('#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups '
                       'nsenter "$@"\n')
    wrapper.chmod(0o755)
    runner = HostRunner(pid=simnode.pid, nsenter=str(wrapper))
    with pytest.raises(PreflightError, match="cannot enter the host's namespaces") as err:
        preflight.check_nsenter(runner)
    assert err.value.remedy == "run the pod privileged with hostPID: true"


def test_without_host_pid_nsenter_would_enter_the_pod_itself(simnode):
    # The pod's own PID (what PID 1 is without hostPID) against the host's /proc/1.
    with pytest.raises(PreflightError, match="is not the host's init") as err:
        preflight.check_host_pid(simnode.root, os.getpid())
    assert "hostPID: true" in err.value.remedy
    preflight.check_host_pid(simnode.root, simnode.pid)


def test_missing_headers_are_installed_then_left_alone(simnode, runner):
    simnode.set_scenarios("headers-missing")
    kver = simnode.kernel_release
    found = preflight.run_preflight(settings_for(simnode), simnode.root, runner)
    assert found.headers is False
    assert packages.ensure_build_deps(simnode.root, runner, kver, lock_wait=30) is True
    assert preflight.headers_present(simnode.root, kver)  # through the absolute build link
    runner.argvs.clear()
    assert packages.ensure_build_deps(simnode.root, runner, kver, lock_wait=30) is False
    assert runner.argvs == []


def test_offline_mirror_names_the_package_and_the_network(simnode, runner):
    simnode.set_scenarios("headers-missing", "apt-offline")
    kver = simnode.kernel_release
    with pytest.raises(PreflightError, match="cannot reach the package mirror") as err:
        packages.ensure_build_deps(simnode.root, runner, kver, lock_wait=5,
                                   retry_wait=wait_none())
    assert f"linux-headers-{kver}" in err.value.message
    assert "E: Failed to fetch" in err.value.message
    assert len(runner.argvs) == 2 * packages.APT_ATTEMPTS


def test_dpkg_lock_held_then_released(simnode, runner):
    simnode.set_scenarios("headers-missing", "dpkg-locked")
    assert packages.dpkg_lock_holder(simnode.root) is not None  # a real fcntl lock
    started = time.monotonic()
    assert packages.ensure_build_deps(simnode.root, runner, simnode.kernel_release,
                                      lock_wait=60) is True
    assert time.monotonic() - started < 30
    assert packages.dpkg_lock_holder(simnode.root) is None


def test_loaded_nouveau_is_blacklisted_and_unloaded(simnode, runner):
    simnode.set_scenarios("nouveau-loaded")
    assert simnode.path("/sys/module/nouveau").exists()
    out = nouveau.ensure_nouveau_disabled(simnode.root, runner)
    assert (out.changed, out.reboot_required) == (True, False)
    assert not simnode.path("/sys/module/nouveau").exists()
    assert simnode.path(nouveau.BLACKLIST).read_text() == nouveau.BLACKLIST_TEXT
    assert simnode.path(f"/boot/initrd.img-{simnode.kernel_release}").exists()
    runner.argvs.clear()
    assert nouveau.ensure_nouveau_disabled(simnode.root, runner).changed is False
    assert runner.argvs == []
    simnode.reboot()  # the blacklist keeps it away after a reboot too
    assert not simnode.path("/sys/module/nouveau").exists()


def test_unused_old_driver_is_unloaded(simnode, runner):
    simnode.set_scenarios("old-driver-loaded")
    assert modules.unload_stale(simnode.root, runner, want_version="580.105.08") is True
    assert [a[0] for a in runner.argvs] == ["rmmod"] * len(runner.argvs)
    assert not read_module(simnode.root, "nvidia").loaded


def test_the_old_drivers_daemon_is_stopped_before_unloading(simnode, runner):
    # After a drain only the old driver's own persistence daemon holds /dev/nvidia0.
    simnode.set_scenarios("old-driver-loaded")
    # (A plain file stands in for the device node: a char node without a driver cannot open.)
    simnode.exec(["sh", "-c", "[ -e /dev/nvidia0 ] || touch /dev/nvidia0; "
                  "cp /bin/sleep /tmp/nvidia-persistenced; "
                  "/tmp/nvidia-persistenced 600 3</dev/nvidia0 >/dev/null 2>&1 &"])
    assert modules.processes_named(simnode.root, "nvidia-persistenced")
    assert modules.unload_stale(simnode.root, runner, want_version="580.105.08",
                                daemon_wait=5) is True
    assert runner.argvs[0][0] == "kill"
    assert not modules.processes_named(simnode.root, "nvidia-persistenced")
    assert not read_module(simnode.root, "nvidia").loaded


def test_old_driver_in_use_means_reboot_required_naming_the_process(simnode, runner):
    simnode.set_scenarios("old-driver-loaded", "module-in-use")
    with pytest.raises(InstallError, match=r"reboot required.*\(cuda-app\) has /dev/nvidia"):
        modules.unload_stale(simnode.root, runner, want_version="580.105.08")
    assert runner.argvs == []
    assert read_module(simnode.root, "nvidia").loaded


def test_persistenced_unit_is_written_and_enabled(simnode, runner):
    assert modules.ensure_persistenced(simnode.root, runner) is True
    active = simnode.exec(["systemctl", "is-active", "nvidia-persistenced"], check=False)
    assert active.returncode == 0
    assert modules.ensure_persistenced(simnode.root, runner) is False


def test_gridd_conf_and_unit_the_azure_way(simnode, runner):
    # What the GRID driver installs: the template and the unit.
    simnode.path("/etc/nvidia").mkdir(parents=True, exist_ok=True)
    simnode.path(licensing.TEMPLATE).write_text("# template\nFeatureType=0\n#EnableUI=TRUE\n")
    unit = simnode.path("/lib/systemd/system/nvidia-gridd.service")
    with pytest.raises(InstallError, match=r"nvidia-gridd\.service systemd unit is missing"):
        licensing.ensure_gridd_running(simnode.root, runner)
    unit.write_text("[Service]\nExecStart=/usr/bin/nvidia-gridd\n")
    assert licensing.ensure_gridd_conf(simnode.root) is True
    assert licensing.ensure_gridd_running(simnode.root, runner) is True
    conf = simnode.path(licensing.GRIDD_CONF).read_text()
    assert "FeatureType=0" not in conf and "IgnoreSP=FALSE" in conf and "EnableUI=FALSE" in conf
    assert simnode.exec(["systemctl", "is-active", "nvidia-gridd"], check=False).returncode == 0
    assert licensing.ensure_gridd_conf(simnode.root) is False
    assert licensing.ensure_gridd_running(simnode.root, runner) is False


def cache_run(node, fake_run, sha256):
    """The fake .run as a verified cache entry (`/var/cache/grid-agent/<sha256>/<name>`)."""
    host_path = f"/var/cache/grid-agent/{sha256}/{fake_run.name}"
    directory = node.root.real_dir(host_path.rsplit("/", 1)[0], create=True)
    shutil.copy(fake_run, directory / fake_run.name)
    return host_path


@pytest.fixture
def installed(simnode, runner, fake_run, fake_run_sha256):
    """The fake GRID driver on the node's disk, installed by its own .run (not loaded)."""
    installer.run_installer(simnode.root, runner, cache_run(simnode, fake_run, fake_run_sha256),
                            "open", timeout=300)
    runner.argvs.clear()
    return simnode


def test_load_makes_every_device_file_then_is_a_no_op(installed, runner):
    assert modules.load_modules(installed.root, runner) is True
    assert [a[0] for a in runner.argvs] == ["modprobe", "nvidia-modprobe", "nvidia-modprobe"]
    for name in ("nvidia", "nvidia_uvm", "nvidia_modeset"):
        assert read_module(installed.root, name).loaded
    for node in modules.DEVICE_NODES:
        assert installed.path(node).exists(), node
    runner.argvs.clear()
    assert modules.load_modules(installed.root, runner) is False
    assert runner.argvs == []


def test_licensing_with_the_drivers_template_and_unit(installed, runner):
    assert licensing.ensure_gridd_conf(installed.root) is True
    conf = installed.path(licensing.GRIDD_CONF).read_text()
    assert "FeatureType=0" not in conf and "IgnoreSP=FALSE" in conf
    assert licensing.ensure_gridd_running(installed.root, runner) is True
    assert installed.exec(["systemctl", "is-enabled", "nvidia-gridd"], check=False).returncode == 0
    installed.reboot()  # enabled: active again after a reboot, nothing to do
    runner.argvs.clear()
    assert licensing.ensure_gridd_conf(installed.root) is False
    assert licensing.ensure_gridd_running(installed.root, runner) is False
    assert [a[1] for a in runner.argvs] == ["is-enabled", "is-active"]


def test_a_driver_without_the_gridd_unit_is_named(simnode, runner, fake_run, fake_run_sha256):
    simnode.set_scenarios("no-gridd-unit")
    installer.run_installer(simnode.root, runner, cache_run(simnode, fake_run, fake_run_sha256),
                            "open", timeout=300)
    assert licensing.ensure_gridd_conf(simnode.root) is True
    with pytest.raises(InstallError, match=r"nvidia-gridd\.service systemd unit is missing"):
        licensing.ensure_gridd_running(simnode.root, runner)
