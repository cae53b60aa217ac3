import os

import pytest
from structlog.testing import capture_logs

from agent.errors import PreflightError
from agent.install import preflight as pf
from tests.fakes.kit import settings
from tests.fakes.pci_config import config_space, host_record
from tests.fakes.runner import FakeRunner
from tests.fakes.tree import Tree

KVER = "6.8.0-1020-azure"
UBUNTU = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n'
SHARED = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
          "25 22 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw\n")
PRIVATE = SHARED.replace(" shared:5", "")


def efivar(enabled: int) -> bytes:
    return bytes([0x06, 0, 0, 0, enabled])


@pytest.fixture
def host(tmp_path):
    """A healthy Ubuntu 24.04 node: headers via the absolute build link, /run shared."""
    tree = Tree(tmp_path)
    tree.write("/etc/os-release", UBUNTU)
    tree.write("/proc/1/mountinfo", SHARED)
    tree.write(f"/usr/src/linux-headers-{KVER}/Makefile", "all:\n")
    tree.link(f"/lib/modules/{KVER}/build", f"/usr/src/linux-headers-{KVER}")
    tree.mkdir("/sys/firmware/efi/efivars")
    (tree.root.path(pf.SECURE_BOOT_VAR)).write_bytes(efivar(0))
    return tree


def runner():
    return FakeRunner().on("true").on("uname", "-r", stdout=f"{KVER}\n")


def test_healthy_node_passes_with_the_hosts_kernel(host):
    run = runner()
    with capture_logs() as logs:
        found = pf.run_preflight(settings(), host.root, run)
    assert found == pf.Preflight(KVER, "ubuntu", "24.04", "disabled", True)
    assert run.commands() == ["true", "uname -r"]  # EFI var readable: no mokutil
    assert logs[-1]["event"] == "preflight_passed" and logs[-1]["changed"] is False


@pytest.mark.parametrize("version", ["22.04", "24.04"])
def test_supported_ubuntu_releases(host, version):
    host.write("/etc/os-release", f"ID=ubuntu\nVERSION_ID={version}\n")
    assert pf.check_os(host.root) == ("ubuntu", version)


def test_other_os_is_refused_naming_what_was_found(host):
    host.write("/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
                                  'ID=debian\nVERSION_ID="12"\n')
    with pytest.raises(PreflightError, match=r"Debian GNU/Linux 12.*ID=debian, VERSION_ID=12")\
            as err:
        pf.run_preflight(settings(), host.root, runner())
    assert err.value.exit_code == 4 and "Ubuntu 22.04/24.04" in err.value.remedy


def test_other_os_allowed_by_opt_in_warns(host):
    host.write("/etc/os-release", "ID=ubuntu\nVERSION_ID=20.04\n")
    with capture_logs() as logs:
        found = pf.run_preflight(settings(allow_unsupported_os="true"), host.root, runner())
    assert found.os_version == "20.04"
    assert any(e["event"] == "unsupported_os_allowed" for e in logs)


def test_os_release_falls_back_to_usr_lib(host):
    host.root.path("/etc/os-release").unlink()
    host.write("/usr/lib/os-release", UBUNTU)
    assert pf.check_os(host.root) == ("ubuntu", "24.04")


def test_secure_boot_from_the_efi_variable_is_refused_before_anything_else(host):
    host.root.path(pf.SECURE_BOOT_VAR).write_bytes(efivar(1))
    run = runner()
    with pytest.raises(PreflightError, match="Secure Boot is enabled") as err:
        pf.run_preflight(settings(), host.root, run)
    assert "Trusted Launch" in err.value.remedy
    assert "uname -r" not in run.commands()


@pytest.mark.parametrize(("output", "rc", "state"), [
    ("SecureBoot enabled\n", 0, True),
    ("SecureBoot disabled\n", 0, False),
    ("This system doesn't support Secure Boot\n", 255, False),
    ("EFI variables are not supported on this system\n", 1, False),
    ("something else\n", 1, None),
])
def test_mokutil_when_the_variable_is_unreadable(tmp_path, output, rc, state):
    run = FakeRunner().on("mokutil", "--sb-state", rc=rc, stdout=output)
    assert pf.secure_boot_state(Tree(tmp_path).root, run) is state
    assert run.commands() == ["mokutil --sb-state"]


def test_unknown_secure_boot_state_warns_and_continues(tmp_path):
    run = FakeRunner().on("mokutil", rc=127, stderr="nsenter: failed to execute mokutil")
    with capture_logs() as logs:
        assert pf.check_secure_boot(Tree(tmp_path).root, run) == "unknown"
    assert logs[0]["event"] == "secure_boot_unknown"


def test_run_not_shared_is_refused(host):
    host.write("/proc/1/mountinfo", PRIVATE)
    with pytest.raises(PreflightError, match="host /run is not a shared mount") as err:
        pf.run_preflight(settings(), host.root, runner())
    assert "make-rshared" in err.value.remedy


def test_unreadable_mount_table_is_refused(host):
    host.root.path("/proc/1/mountinfo").unlink()
    with pytest.raises(PreflightError, match="mount table"):
        pf.check_run_shared(host.root)


def test_nsenter_eperm_becomes_privileged_hostpid_advice():
    run = FakeRunner().on("true", rc=1, stderr="nsenter: reassociate to namespace 'ns/mnt' "
                                              "failed: Operation not permitted\n")
    with pytest.raises(PreflightError, match="cannot enter the host's namespaces") as err:
        pf.check_nsenter(run)
    assert err.value.remedy == "run the pod privileged with hostPID: true"


def test_nsenter_other_failure_is_still_a_preflight_error():
    run = FakeRunner().on("true", rc=1, stderr="nsenter: cannot open /proc/9/ns/ipc: "
                                              "No such file or directory\n")
    with pytest.raises(PreflightError, match="cannot run commands on the host"):
        pf.check_nsenter(run)


def test_real_runner_eperm_from_nsenter(fp):
    # The real runner and nsenter's real wording, as pytest-subprocess plays them.
    from agent.host.runner import HostRunner

    fp.register(["nsenter", fp.any()], returncode=1,
                stderr="nsenter: reassociate to namespace 'ns/ipc' failed: Operation not "
                       "permitted\n")
    with pytest.raises(PreflightError, match="Operation not permitted"):
        pf.check_nsenter(HostRunner(pid=1))


def test_kernel_release_is_asked_of_the_host():
    assert pf.host_kernel_release(FakeRunner().on("uname", stdout="6.8.0-1020-azure\n")) == \
        "6.8.0-1020-azure"
    with pytest.raises(PreflightError, match="unusable kernel release"):
        pf.host_kernel_release(FakeRunner().on("uname", stdout="\n"))
    failing = FakeRunner().on("uname", rc=1, stderr="boom")
    with pytest.raises(PreflightError, match="cannot ask the host"):
        pf.host_kernel_release(failing)


def test_headers_via_the_absolute_build_link_resolve_inside_the_root(host):
    # The link points at /usr/src/...: resolving it against the agent's own / would miss.
    assert pf.headers_present(host.root, KVER) is True
    host.root.path(f"/lib/modules/{KVER}/build").unlink()
    assert pf.headers_present(host.root, KVER) is True  # /usr/src/linux-headers-<kver>
    assert pf.headers_present(host.root, "6.8.0-9999-azure") is False


def test_an_empty_headers_dir_does_not_count(tmp_path):
    tree = Tree(tmp_path)
    tree.mkdir(f"/usr/src/linux-headers-{KVER}")
    assert pf.headers_present(tree.root, KVER) is False


def test_missing_headers_with_apt_get_pass_for_the_packages_step(host):
    host.root.path(f"/usr/src/linux-headers-{KVER}/Makefile").unlink()
    host.executable("/usr/bin/apt-get")
    found = pf.run_preflight(settings(), host.root, runner())
    assert found.headers is False


def test_missing_headers_without_apt_get_is_refused(host):
    host.root.path(f"/usr/src/linux-headers-{KVER}/Makefile").unlink()
    with pytest.raises(PreflightError, match=f"headers for {KVER} are missing") as err:
        pf.run_preflight(settings(), host.root, runner())
    assert f"linux-headers-{KVER}" in err.value.remedy


def test_disk_check_uses_the_nearest_existing_directory(host):
    free = pf.check_disk(host.root, "/var/cache/grid-agent", 1)
    stat = os.statvfs(host.base)
    assert abs(free - stat.f_bavail * stat.f_frsize) < 64 * pf.MB


def test_not_enough_disk_is_refused_with_numbers(host):
    with pytest.raises(PreflightError, match=r"not enough free space for /usr: \d+ MiB free"):
        pf.check_disk(host.root, "/usr", 1 << 60)
    with pytest.raises(PreflightError, match="not enough free space"):
        pf.run_preflight(settings(min_free_mb=str(1 << 30)), host.root, runner())



def test_host_pid_matches_when_the_root_shows_our_own_proc(tmp_path):
    tree = Tree(tmp_path)
    tree.link("/proc/1/ns/mnt", os.readlink("/proc/self/ns/mnt"))
    pf.check_host_pid(tree.root, os.getpid())
    pf.check_host_pid(tree.root, None)  # --no-nsenter: nothing to compare


def test_without_host_pid_the_target_is_the_pods_own_init(tmp_path):
    tree = Tree(tmp_path)
    tree.link("/proc/1/ns/mnt", "mnt:[4026531841]")
    with pytest.raises(PreflightError, match="is not the host's init") as err:
        pf.check_host_pid(tree.root, os.getpid())
    assert err.value.remedy == "run the pod privileged with hostPID: true"


def test_unreadable_namespaces_only_warn(tmp_path):
    with capture_logs() as logs:
        pf.check_host_pid(Tree(tmp_path).root, os.getpid())
    assert logs[0]["event"] == "host_pid_unverified"


def test_known_bad_kernel_is_a_warning_with_advice_not_a_refusal(host):
    bad = "6.11.0-1018-azure"
    host.write(f"/usr/src/linux-headers-{bad}/Makefile", "all:\n")
    host.link(f"/lib/modules/{bad}/build", f"/usr/src/linux-headers-{bad}")
    run = FakeRunner().on("true").on("uname", "-r", stdout=f"{bad}\n")
    with capture_logs() as logs:
        found = pf.run_preflight(settings(), host.root, run)
    (warning,) = [e for e in logs if e["event"] == "known_bad_kernel"]
    assert warning["log_level"] == "warning" and warning["kernel_release"] == bad
    assert "6.8" in warning["advice"] and "Microsoft Learn" in warning["source"]
    (line,) = found.warnings
    assert line.startswith(f"kernel {bad}: GRID driver installation is reported failing")
    assert logs[-1]["event"] == "preflight_passed"


def test_a_good_kernel_has_no_warning(host):
    with capture_logs() as logs:
        found = pf.run_preflight(settings(), host.root, runner())
    assert found.warnings == ()
    assert "known_bad_kernel" not in [e["event"] for e in logs]


def put_vgpu(host, config: bytes) -> None:
    host.write("/sys/bus/pci/devices/0000:00:02.0/vendor", "0x10de\n")
    host.root.path("/sys/bus/pci/devices/0000:00:02.0/config").write_bytes(config)


def test_a_pin_one_branch_behind_the_host_warns(host):
    put_vgpu(host, config_space())  # host vGPU manager 595.58.02 (vGPU 20); default pin is 580
    with capture_logs() as logs:
        found = pf.run_preflight(settings(), host.root, runner())
    (warning,) = [e for e in logs if e["event"] == "guest_branch_behind_host"]
    assert warning["log_level"] == "warning"
    assert warning["remedy"] == "set GRID_AGENT_DRIVER_VERSION=595.58.03-grid-azure (vGPU 20, " \
                                "the host's)"
    assert found.warnings[0].startswith("guest driver 580.105.08-grid-azure (vGPU 19), host vGPU "
                                        "manager 595.58.02 (vGPU 20): one branch behind")


def test_a_pin_the_host_cannot_run_is_refused_with_the_remedy(host):
    put_vgpu(host, config_space(records=host_record("580.105.06", "R580")))
    with pytest.raises(PreflightError) as caught:
        pf.run_preflight(settings(driver_version="595.58.03-grid-azure",
                                  driver_sha256="ab" * 32), host.root, runner())
    assert caught.value.exit_code == 4
    assert "the guest is newer than the host, which cannot run it" in caught.value.line()
    assert "GRID_AGENT_DRIVER_VERSION=580.105.08-grid-azure" in caught.value.line()


def test_an_unknown_host_version_is_a_logged_fact(host):
    put_vgpu(host, config_space(vgpu=False))  # pass-through: no vGPU capability
    with capture_logs() as logs:
        found = pf.run_preflight(settings(), host.root, runner())
    (fact,) = [e for e in logs if e["event"] == "host_vgpu_unknown"]
    assert fact["log_level"] == "info" and "no vGPU capability" in fact["detail"]
    assert found.warnings == ()
