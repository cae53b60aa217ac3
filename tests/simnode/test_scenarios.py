"""Each scenario changes what the simulated node's stubs report (issue 3, item 4)."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import time

import pytest

from agent.driver.nvsmi import parse_report
from tests.simnode.host import SCENARIOS

pytestmark = pytest.mark.simnode

RUN = "/var/cache/grid-agent/NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"
LOG = "/var/log/nvidia-installer.log"


def install(node, fake_run, module_type="open", check=True):
    target = node.path(RUN)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(fake_run, target)
    return node.exec(["sh", RUN, "--silent", "--no-drm", "-M", module_type], check=check)


def load(node, check=True):
    return node.exec(["modprobe", "-a", "nvidia", "nvidia-uvm", "nvidia-modeset"], check=check)


def gpu(node):
    return parse_report(node.exec(["nvidia-smi", "-q", "-x"]).stdout).gpus[0]


@pytest.fixture
def driven(simnode, fake_run):
    """A node with the fake driver installed and loaded (scenario healthy)."""
    install(simnode, fake_run)
    load(simnode)
    return simnode


def test_every_contract_scenario_is_known():
    contract = {"healthy", "unlicensed", "wrong-profile", "mig-disabled", "requires-open",
                "secure-boot", "nouveau-loaded", "headers-missing", "apt-offline", "dpkg-locked",
                "module-in-use", "smi-exit-14", "installer-error", "old-driver-loaded",
                "no-gridd-unit"}
    assert contract <= set(SCENARIOS)
    assert set(SCENARIOS) - contract == {"requires-open-loads", "recommend-unavailable",
                                         "host-gcc-11", "foreign-cuda-driver", "installer-slow",
                                         "proprietary-gpu", "dkms"}


def test_healthy_reports_a_licensed_vgpu_with_mig(driven):
    assert driven.exec(["nvidia-smi"]).returncode == 0
    g = gpu(driven)
    assert g.license_status.startswith("Licensed (Expiry")
    assert (g.mig_current, g.product_name.endswith("DC-4-96Q")) == ("Enabled", True)


@pytest.mark.parametrize(("scenario", "field", "value"), [
    ("unlicensed", "license_status", "Unlicensed (Restricted)"),
    ("wrong-profile", "product_name", "NVIDIA RTX Pro 6000 Blackwell DC-2-48Q"),
    ("mig-disabled", "mig_current", "Disabled"),
])
def test_report_scenarios(driven, scenario, field, value):
    driven.set_scenarios(scenario)
    assert getattr(gpu(driven), field) == value
    assert driven.exec(["nvidia-smi"]).returncode == 0


def test_smi_exit_14_prints_the_table_and_exits_14(driven):
    driven.set_scenarios("smi-exit-14")
    out = driven.exec(["nvidia-smi"], check=False)
    assert out.returncode == 14 and "Driver Version: 580.105.08" in out.stdout
    assert "infoROM is corrupted" in out.stderr


def test_requires_open_fails_the_proprietary_load_with_the_nvrm_line(simnode, fake_run):
    simnode.set_scenarios("requires-open")
    failed = install(simnode, fake_run, "proprietary", check=False)
    assert failed.returncode == 1
    assert "Unable to load the kernel module 'nvidia.ko'" in simnode.path(LOG).read_text()
    assert "requires use of the NVIDIA open kernel modules" in simnode.exec(["dmesg"]).stdout
    recommended = simnode.exec(["sh", RUN, "--print-recommended-kernel-module-type"])
    assert recommended.stdout.split()[-1] == "open"
    simnode.exec(["sh", RUN, "--silent", "-M", "proprietary", "--skip-module-load"])
    out = load(simnode, check=False)
    assert out.returncode == 1 and "No such device" in out.stderr
    assert not simnode.path("/sys/module/nvidia").exists()
    install(simnode, fake_run, "open")
    load(simnode)
    assert "Open Kernel Module" in simnode.path("/proc/driver/nvidia/version").read_text()


def test_requires_open_loads_then_finds_no_devices(simnode, fake_run):
    simnode.set_scenarios("requires-open-loads")
    install(simnode, fake_run, "proprietary")  # the installer's own test load passes
    load(simnode)
    assert simnode.path("/sys/module/nvidia/version").exists()
    assert "requires use of the NVIDIA open kernel modules" in simnode.exec(["dmesg"]).stdout
    smi = simnode.exec(["nvidia-smi"], check=False)
    assert (smi.returncode, smi.stdout.strip()) == (6, "No devices were found")
    simnode.exec(["rmmod", "nvidia_modeset", "nvidia_uvm", "nvidia"])
    install(simnode, fake_run, "open")
    load(simnode)
    assert simnode.exec(["nvidia-smi"], check=False).returncode == 0


def test_secure_boot_is_on_in_efi_mokutil_and_the_loader(simnode, fake_run):
    install(simnode, fake_run)
    assert simnode.exec(["mokutil", "--sb-state"]).stdout.strip() == "SecureBoot disabled"
    simnode.set_scenarios("secure-boot")
    assert simnode.exec(["mokutil", "--sb-state"]).stdout.strip() == "SecureBoot enabled"
    var = simnode.path("/sys/firmware/efi/efivars/"
                       "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c").read_bytes()
    assert var[4] == 1
    out = load(simnode, check=False)
    assert out.returncode == 1 and "Key was rejected by service" in out.stderr


def test_nouveau_loaded_until_blacklisted_and_rebooted(simnode):
    simnode.set_scenarios("nouveau-loaded")
    assert simnode.path("/sys/module/nouveau/refcnt").exists()
    assert "nouveau" in simnode.exec(["lsmod"]).stdout
    simnode.reboot()
    assert simnode.path("/sys/module/nouveau").exists()  # not blacklisted: back after boot
    simnode.exec(["sh", "-c", "echo 'blacklist nouveau' > /etc/modprobe.d/blacklist-nouveau.conf"])
    simnode.exec(["rmmod", "nouveau"])
    assert not simnode.path("/sys/module/nouveau").exists()
    simnode.reboot()
    assert not simnode.path("/sys/module/nouveau").exists()


def test_headers_missing_then_apt_installs_them(simnode):
    release = simnode.kernel_release
    simnode.set_scenarios("headers-missing")
    assert not simnode.path(f"/usr/src/linux-headers-{release}").exists()
    assert not simnode.path(f"/lib/modules/{release}/build").is_symlink()
    query = simnode.exec(["dpkg-query", "-W", f"linux-headers-{release}"], check=False)
    assert query.returncode == 1
    simnode.exec(["apt-get", "-q", "-y", "install", f"linux-headers-{release}"])
    assert (simnode.root.resolve(f"/lib/modules/{release}/build") / "Makefile").exists()
    assert simnode.exec(["dpkg-query", "-W", f"linux-headers-{release}"]).returncode == 0


def test_apt_offline_fails_like_apt(simnode):
    release = simnode.kernel_release
    simnode.set_scenarios("headers-missing", "apt-offline")
    update = simnode.exec(["apt-get", "update"])
    assert "Temporary failure resolving" in update.stdout + update.stderr
    out = simnode.exec(["apt-get", "-y", "install", f"linux-headers-{release}"], check=False)
    assert out.returncode == 100 and "E: Unable to fetch some archives" in out.stderr
    assert not simnode.path(f"/usr/src/linux-headers-{release}").exists()


def test_dpkg_locked_holds_a_real_lock_for_a_few_seconds(simnode):
    simnode.set_scenarios("headers-missing", "dpkg-locked")
    fd = os.open(simnode.path("/var/lib/dpkg/lock-frontend"), os.O_RDONLY)
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        l_type = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
    finally:
        os.close(fd)
    assert l_type == fcntl.F_WRLCK  # what an agent outside the namespace sees
    busy = simnode.exec(["apt-get", "-y", "install", "gcc"], check=False)
    assert busy.returncode == 100 and "Could not get lock" in busy.stderr
    assert "(unattended-upgr)" in busy.stderr
    started = time.monotonic()
    simnode.exec(["apt-get", "-o", "DPkg::Lock::Timeout=30", "-y", "install",
                  f"linux-headers-{simnode.kernel_release}"])
    assert 1.0 < time.monotonic() - started < 15


def test_module_in_use_raises_refcnt_and_blocks_rmmod(driven):
    assert driven.path("/sys/module/nvidia/refcnt").read_text() == "2\n"
    driven.set_scenarios("module-in-use")
    assert driven.path("/sys/module/nvidia/refcnt").read_text() == "3\n"
    for mod in ("nvidia_modeset", "nvidia_uvm"):
        driven.exec(["rmmod", mod])
    out = driven.exec(["rmmod", "nvidia"], check=False)
    assert out.returncode == 1 and "Module nvidia is in use" in out.stderr
    holders = [p for p in driven.path("/proc").iterdir() if p.name.isdigit()
               and (p / "comm").read_text().strip() == "cuda-app"]
    assert holders and "/dev/nvidia0" in [os.readlink(f) for f in (holders[0] / "fd").iterdir()]
    driven.set_scenarios("healthy")
    driven.exec(["rmmod", "nvidia"])


def test_installer_error_writes_error_lines_and_exits_1(simnode, fake_run):
    simnode.set_scenarios("installer-error")
    out = install(simnode, fake_run, check=False)
    assert out.returncode == 1
    errors = [ln for ln in simnode.path(LOG).read_text().splitlines() if ln.startswith("ERROR:")]
    assert any("Building kernel modules" in ln for ln in errors)


def test_old_driver_loaded_reports_the_old_version(simnode, fake_run):
    simnode.set_scenarios("old-driver-loaded")
    assert simnode.path("/sys/module/nvidia/version").read_text() == "570.172.08\n"
    assert "Kernel Module  570.172.08" in simnode.path("/proc/driver/nvidia/version").read_text()
    install(simnode, fake_run, check=False)
    for mod in ("nvidia_modeset", "nvidia_uvm", "nvidia"):
        simnode.exec(["rmmod", mod])
    install(simnode, fake_run)
    load(simnode)
    assert simnode.path("/sys/module/nvidia/version").read_text() == "580.105.08\n"


def test_old_driver_loaded_under_a_new_userspace_is_a_version_mismatch(simnode, fake_run):
    install(simnode, fake_run)
    simnode.set_scenarios("old-driver-loaded")
    out = simnode.exec(["nvidia-smi"], check=False)
    assert out.returncode == 18 and "Driver/library version mismatch" in out.stdout


def test_no_gridd_unit(simnode, fake_run):
    simnode.set_scenarios("no-gridd-unit")
    install(simnode, fake_run)
    assert simnode.path("/usr/bin/nvidia-gridd").exists()
    assert not simnode.path("/lib/systemd/system/nvidia-gridd.service").exists()
    out = simnode.exec(["systemctl", "enable", "--now", "nvidia-gridd"], check=False)
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_systemctl_records_units_and_a_reboot_starts_the_enabled(simnode, fake_run):
    install(simnode, fake_run)
    simnode.exec(["systemctl", "enable", "--now", "nvidia-gridd.service"])
    assert simnode.exec(["systemctl", "is-active", "nvidia-gridd"]).stdout.strip() == "active"
    simnode.exec(["systemctl", "stop", "nvidia-gridd"])
    assert simnode.exec(["systemctl", "is-active", "--quiet", "nvidia-gridd"],
                        check=False).returncode == 3
    simnode.reboot()
    assert simnode.exec(["systemctl", "is-enabled", "nvidia-gridd"]).returncode == 0
    assert simnode.exec(["systemctl", "is-active", "nvidia-gridd"]).returncode == 0


def test_reboot_autoloads_an_installed_driver_or_not(simnode, fake_run):
    install(simnode, fake_run)
    simnode.reboot(autoload=True)
    assert simnode.path("/sys/module/nvidia/version").read_text() == "580.105.08\n"
    simnode.reboot(autoload=False)
    assert not simnode.path("/sys/module/nvidia").exists()
    assert not simnode.path("/proc/driver/nvidia").exists()


def test_dkms_is_absent_until_apt_installs_it(simnode, fake_run):
    target = simnode.path(RUN)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(fake_run, target)
    assert simnode.exec(["sh", "-c", "command -v dkms"], check=False).returncode != 0
    failed = simnode.exec(["sh", RUN, "--silent", "--dkms", "-M", "open"], check=False)
    assert failed.returncode == 1 and "through DKMS" in simnode.path(LOG).read_text()
    simnode.exec(["apt-get", "-y", "install", "dkms"])
    simnode.exec(["sh", RUN, "--silent", "--dkms", "-M", "open"])
    assert simnode.path("/usr/src/nvidia-580.105.08/Kbuild").exists()


def test_dkms_builds_the_registered_source_with_a_real_kbuild(simnode, fake_run):
    """Scenario dkms: `--dkms` leaves a real DKMS registration (dkmssim.py, after dkms.in)."""
    simnode.set_scenarios("healthy", "dkms")
    simnode.path(RUN).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(fake_run, simnode.path(RUN))
    simnode.exec(["sh", RUN, "--silent", "--dkms", "-M", "open"])
    rel, mod = simnode.kernel_release, "nvidia/580.105.08"
    dkms = lambda *a: simnode.exec(["dkms", *a], check=False)  # noqa: E731
    assert dkms("status").stdout == f"{mod}, {rel}, x86_64: installed\n"
    ko = f"/lib/modules/{rel}/updates/dkms/nvidia.ko"
    assert simnode.exec(["modinfo", "-F", "vermagic", ko]).stdout.split()[0] == rel
    assert simnode.path(f"/var/lib/dkms/nvidia/580.105.08/{rel}/x86_64/module/nvidia.ko").exists()
    assert simnode.path(f"/var/lib/dkms/nvidia/kernel-{rel}-x86_64").is_symlink()
    assert not simnode.path(f"/lib/modules/{rel}/kernel/drivers/video/nvidia.ko").exists()
    again = dkms("add", mod)
    assert again.returncode == 3 and f"DKMS tree already contains: {mod}" in again.stderr
    assert dkms("install", mod, "-k", rel).returncode == 5
    simnode.exec(["mkdir", "-p", "/lib/modules/9.9.9-none"])
    none = dkms("install", mod, "-k", "9.9.9-none")
    assert none.returncode == 21 and "Your kernel headers for kernel 9.9.9-none cannot be " \
        "found at /lib/modules/9.9.9-none/build or /lib/modules/9.9.9-none/source." in none.stderr
    assert dkms("remove", mod, "--all").returncode == 0
    assert dkms("status").stdout == "" and not simnode.path(ko).exists()


def test_a_foreign_cuda_driver_with_dkms_is_built_by_dkms_and_purged_by_its_prerm(simnode):
    """foreign-cuda-driver with dkms: nvidia-dkms-535's postinst and prerm run the node's dkms."""
    simnode.set_scenarios("dkms", "foreign-cuda-driver")  # dkms applied first either way
    rel, mod = simnode.kernel_release, "nvidia/535.183.01"
    assert simnode.exec(["dkms", "status"]).stdout == f"{mod}, {rel}, x86_64: installed\n"
    ko = f"/lib/modules/{rel}/updates/dkms/nvidia.ko"
    modinfo = lambda field: simnode.exec(["modinfo", "-F", field, ko]).stdout.split()  # noqa: E731
    assert modinfo("version") == ["535.183.01"] and modinfo("vermagic")[0] == rel
    active = simnode.path(f"/var/lib/dkms/nvidia/kernel-{rel}-x86_64")
    assert os.readlink(active) == f"535.183.01/{rel}/x86_64"
    purged = simnode.exec(["apt-get", "-y", "purge", "nvidia-dkms-535"])
    assert "Deleting module nvidia/535.183.01 completely from the DKMS tree." in purged.stdout
    assert simnode.exec(["dkms", "status"]).stdout == ""
    for gone in (ko, f"/var/lib/dkms/{mod}", "/usr/src/nvidia-535.183.01"):
        assert not simnode.path(gone).exists(), gone
