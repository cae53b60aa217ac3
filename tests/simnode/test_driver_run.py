"""The fake GRID .run: real makeself, real kbuild .ko files, installed through nsenter."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.driver.nvsmi import parse_report

pytestmark = pytest.mark.simnode

RUN_IN_HOST = "/var/cache/grid-agent/NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"
LOG = "/var/log/nvidia-installer.log"


def put_run(simnode, fake_run: Path) -> str:
    target = simnode.path(RUN_IN_HOST)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(fake_run, target)
    return RUN_IN_HOST


def install(simnode, fake_run, *flags: str) -> subprocess.CompletedProcess[str]:
    run = put_run(simnode, fake_run)
    return simnode.exec(["sh", run, "--silent", "--no-drm", *flags, f"--log-file-name={LOG}"],
                        check=False)


def errors(simnode) -> list[str]:
    text = simnode.path(LOG).read_text()
    return [ln for ln in text.splitlines() if ln.startswith("ERROR: ")]


def test_the_run_is_a_makeself_archive_named_like_nvidias(fake_run):
    assert fake_run.name == "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"
    check = subprocess.run(["sh", str(fake_run), "--check"], capture_output=True, text=True)
    assert check.returncode == 0 and "MD5 checksums are OK" in check.stdout + check.stderr
    listing = subprocess.run(["sh", str(fake_run), "--list"], capture_output=True,
                             text=True, check=True).stdout
    assert "./nvidia-installer" in listing and "./kernel-open/nvidia.c" in listing


def test_the_blackwell_node_refuses_the_proprietary_module_like_the_real_gpu(simnode, fake_run):
    # No scenario: the real installer takes -M proprietary without a word (kernel.c), then
    # its test load fails because the GPU needs the open modules (the NVRM line).
    result = install(simnode, fake_run, "-M", "proprietary")
    assert result.returncode == 1
    assert "Unable to load the kernel module 'nvidia.ko'" in errors(simnode)[-1]
    assert not any("open kernel modules" in line for line in errors(simnode))
    assert "requires use of the NVIDIA open kernel modules" in simnode.exec(["dmesg"]).stdout


def test_installer_flags_pass_through_the_makeself_header(fake_run, tmp_path):
    out = subprocess.run(["sh", str(fake_run), "--print-recommended-kernel-module-type"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "open"
    bad = subprocess.run(["sh", str(fake_run), "--no-such-flag"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert bad.returncode == 1 and "Unrecognized option: '--no-such-flag'" in bad.stderr
    subprocess.run(["sh", str(fake_run), "-x"], capture_output=True, cwd=tmp_path, check=True)
    assert (tmp_path / "NVIDIA-Linux-x86_64-580.105.08-grid-azure/nvidia-installer").exists()


def test_the_kernel_modules_are_real_kbuild_output(fake_run, tmp_path, simnode):
    subprocess.run(["sh", str(fake_run), "-x"], capture_output=True, cwd=tmp_path, check=True)
    extracted = tmp_path / "NVIDIA-Linux-x86_64-580.105.08-grid-azure"
    built = extracted / "prebuilt" / simnode.kernel_release
    for sub, licence in (("kernel", "NVIDIA"), ("kernel-open", "Dual MIT/GPL")):
        info = subprocess.run(["modinfo", str(built / sub / "nvidia.ko")], capture_output=True,
                              text=True, check=True).stdout
        assert f"vermagic:       {simnode.kernel_release} SMP" in info
        assert f"license:        {licence}" in info and "version:        580.105.08" in info
    assert "Building modules" in (built / "build.log").read_text() or \
        "MODPOST" in (built / "build.log").read_text()


def test_install_through_nsenter_puts_a_real_ko_under_lib_modules(simnode, fake_run):
    simnode.set_scenarios("proprietary-gpu")  # so the installer's test load passes
    result = install(simnode, fake_run, "-M", "proprietary")
    assert result.returncode == 0, result.stderr
    ko = simnode.path(f"/lib/modules/{simnode.kernel_release}/kernel/drivers/video/nvidia.ko")
    assert ko.read_bytes()[:4] == b"\x7fELF"
    assert "license=NVIDIA" in ko.read_bytes().decode("latin-1")
    assert "modules.dep" in {p.name for p in ko.parents[3].iterdir()}  # real depmod ran
    for path in ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-modprobe", "/usr/bin/nvidia-gridd",
                 "/usr/bin/nvidia-persistenced", "/usr/bin/nvidia-uninstall",
                 "/lib/systemd/system/nvidia-gridd.service", "/etc/nvidia/gridd.conf.template"):
        assert simnode.path(path).exists(), path
    lib = simnode.root.resolve("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
    assert lib.name == "libnvidia-ml.so.580.105.08" and lib.read_bytes()[:4] == b"\x7fELF"
    assert "is now complete" in simnode.path(LOG).read_text()
    assert not errors(simnode)
    assert not Path("/sys/module/nvidia").exists()  # the machine's kernel never saw it
    assert not Path("/usr/bin/nvidia-smi").exists()


def test_open_modules_and_the_driver_runs_after_modprobe(simnode, fake_run):
    assert install(simnode, fake_run, "-M", "open").returncode == 0
    smi = simnode.exec(["nvidia-smi"], check=False)
    assert smi.returncode == 9 and "couldn't communicate with the NVIDIA driver" in smi.stdout
    simnode.exec(["modprobe", "-a", "nvidia", "nvidia-uvm", "nvidia-modeset"])
    simnode.exec(["nvidia-modprobe", "-c0"])
    simnode.exec(["nvidia-modprobe", "-u", "-c0"])
    assert "Open Kernel Module" in simnode.path("/proc/driver/nvidia/version").read_text()
    assert simnode.path("/sys/module/nvidia/version").read_text() == "580.105.08\n"
    assert simnode.path("/sys/module/nvidia/refcnt").read_text() == "2\n"
    assert sorted(p.name for p in simnode.path("/sys/module/nvidia/holders").iterdir()) == [
        "nvidia_modeset", "nvidia_uvm"]
    for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"):
        assert simnode.path(node).is_char_device(), node
    report = parse_report(simnode.exec(["nvidia-smi", "-q", "-x"]).stdout)
    gpu = report.gpus[0]
    assert report.driver_version == "580.105.08"
    assert gpu.product_name == "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q"
    assert (gpu.pci_device_id, gpu.pci_sub_system_id) == ("2BB510DE", "21871414")
    assert (gpu.virtualization_mode, gpu.mig_current) == ("VGPU", "Enabled")
    assert re.fullmatch(r"Licensed \(Expiry: \d{4}-\d{1,2}-\d{1,2} \d{1,2}:\d{1,2}:\d{1,2} GMT\)",
                        gpu.license_status)
    table = simnode.exec(["nvidia-smi"])
    assert "Driver Version: 580.105.08" in table.stdout


def test_headers_missing_is_an_error_line_and_exit_1(simnode, fake_run):
    simnode.set_scenarios("headers-missing")
    result = install(simnode, fake_run, "-M", "proprietary")
    assert result.returncode == 1
    assert errors(simnode)[-1].startswith("ERROR: Unable to find the kernel source tree")
    assert not simnode.path("/usr/bin/nvidia-smi").exists()


def test_a_loaded_driver_blocks_the_installer_like_the_real_one(simnode, fake_run):
    simnode.set_scenarios("old-driver-loaded")
    result = install(simnode, fake_run, "-M", "proprietary")
    assert result.returncode == 1
    assert "appears to be already loaded" in errors(simnode)[-1]


def test_uninstall_removes_what_the_install_put(simnode, fake_run):
    assert install(simnode, fake_run, "-M", "open").returncode == 0
    out = simnode.exec(["nvidia-uninstall", "--silent"], check=False)
    assert out.returncode == 0, out.stderr
    assert not simnode.path("/usr/bin/nvidia-smi").exists()
    assert not simnode.path(f"/lib/modules/{simnode.kernel_release}/kernel/drivers/video/"
                            "nvidia.ko").exists()
    assert "is complete" in simnode.path("/var/log/nvidia-uninstall.log").read_text()


def test_without_a_cached_build_the_installer_runs_kbuild_in_the_host(simnode, tmp_path):
    from tests.simnode.driver_run import build_fake_run

    bare = build_fake_run(tmp_path, releases=[])  # no .ko inside: kbuild at install time
    result = install(simnode, bare, "-M", "open")
    assert result.returncode == 0, simnode.path(LOG).read_text()[-2000:]
    log = simnode.path(LOG).read_text()
    assert f"make -C /lib/modules/{simnode.kernel_release}/build" in log and "MODPOST" in log
    ko = simnode.path(f"/lib/modules/{simnode.kernel_release}/kernel/drivers/video/nvidia.ko")
    assert "license=Dual MIT/GPL" in ko.read_bytes().decode("latin-1")
