"""Opt-in tier: the .run builds NVIDIA's real kernel module sources (issue 13, item 9).

Debian's nvidia-kernel-source (535.261.03: Makefile, Kbuild, conftest.sh, the nvidia*/
interface sources and the nv-kernel.o_binary core) is the `.run`'s `kernel/`, and its
nvidia-open-kernel-source (contrib; same layout, Dual MIT/GPL sources with the prebuilt
nv-kernel.o_binary and nv-modeset-kernel.o_binary cores) its `kernel-open/`, as in
NVIDIA's own .run. Inside the simulated node the fake installer builds the tree `-M`
selects as nvidia-installer does (NVIDIA's Makefile, `make modules`: real conftest against
Debian's 6.1 headers, real kbuild and modpost). The modules are installed in the node and
"loaded" by its fake modprobe, never by this machine's kernel. Minutes on 2 cores, so off
by default: GRID_SIM_REAL_NVIDIA_SOURCES=1 (marker nvidia_sources). Each prints its build
time.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from agent.install.installer import error_lines
from tests.simnode import realparts
from tests.simnode.driver_run import build_fake_run

pytestmark = [
    pytest.mark.simnode,
    pytest.mark.nvidia_sources,
    pytest.mark.skipif(os.environ.get("GRID_SIM_REAL_NVIDIA_SOURCES") != "1",
                       reason="opt-in (minutes): GRID_SIM_REAL_NVIDIA_SOURCES=1"),
    pytest.mark.timeout(3600),
]

RUN = "/var/tmp/NVIDIA-Linux-x86_64-real.run"
_MODINFO = re.compile(rb"(?:^|\x00)(version|license|vermagic|name)=([^\x00]*)")


def modinfo(data: bytes) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in _MODINFO.findall(data)}


def missing(package: str):
    return pytest.mark.skipif(bool(realparts.missing(package)),
                              reason=f"{package} not in {realparts.DEBS}: run scripts/setup")


def run_real(simnode, tmp_path, mtype: str, **sources) -> tuple[str, float, int, str]:
    """Build the .run around NVIDIA's real tree, run it with `-M mtype`.

    Returns (version, seconds, exit status, installer log)."""
    tree = next(iter(sources.values()))
    version = realparts.source_version(tree)
    run = build_fake_run(tmp_path, f"{version}-debian", releases=[], **sources)
    target = simnode.path(RUN)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run, target)
    started = time.monotonic()
    out = simnode.exec(["sh", RUN, "--silent", "--no-drm", "-M", mtype],
                       check=False, timeout=3600)
    seconds = time.monotonic() - started
    log = simnode.path("/var/log/nvidia-installer.log").read_text()
    assert f"-> Kernel module type: {mtype}" in log
    assert "CONFTEST: " in log  # NVIDIA's own conftest ran against the headers
    return version, seconds, out.returncode, log


def install_real(simnode, tmp_path, mtype: str, **sources) -> tuple[str, float]:
    """run_real, which must succeed; (version, seconds)."""
    version, seconds, status, log = run_real(simnode, tmp_path, mtype, **sources)
    assert status == 0, log[-4000:]
    return version, seconds


def has_exclude_bars(simnode) -> bool:
    """Whether the node's kernel headers have Linux 916bfc605c84 (see realparts)."""
    pci_h = f"/lib/modules/{simnode.kernel_release}/source/include/linux/pci.h"
    return "int exclude_bars" in simnode.exec(["cat", pci_h]).stdout


def report(capsys, what: str, seconds: float) -> None:
    with capsys.disabled():
        print(f"\nreal NVIDIA {what}: installer with kbuild took {seconds:.0f} s in the "
              f"simulated node ({os.cpu_count()} CPUs)")


def installed_modinfo(simnode) -> dict[str, dict[str, str]]:
    video = simnode.path(f"/lib/modules/{simnode.kernel_release}/kernel/drivers/video")
    return {name: modinfo((video / f"{name}.ko").read_bytes())
            for name in ("nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm",
                         "nvidia-peermem")}


def assert_loads(simnode, info: dict[str, dict[str, str]], version: str, proc: str) -> None:
    """Real vermagic and version; the node's modprobe (never the kernel) accepts them."""
    for name, fields in info.items():
        assert fields["vermagic"].startswith(f"{simnode.kernel_release} SMP "), (name, fields)
        assert fields.get("version", version) == version, (name, fields)
    simnode.exec(["modprobe", "-a", "nvidia", "nvidia-uvm", "nvidia-modeset"])
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == version
    # Told apart by the licence, as the loaded module tells the real kernel.
    assert proc in simnode.path("/proc/driver/nvidia/version").read_text()


@missing("nvidia-kernel-source")
def test_nvidias_real_kernel_sources_build_with_the_real_kbuild(simnode, tmp_path, capsys):
    simnode.set_scenarios("proprietary-gpu")  # 535 drives no Blackwell: another GPU's node
    version, seconds = install_real(simnode, tmp_path, "proprietary",
                                    nvidia_sources=realparts.kernel_tree())
    info = installed_modinfo(simnode)
    # NVIDIA's own licence strings (535.261.03), not ours.
    assert {name: fields["license"] for name, fields in info.items()} == {
        "nvidia": "NVIDIA", "nvidia-modeset": "NVIDIA", "nvidia-uvm": "Dual MIT/GPL",
        "nvidia-drm": "MIT", "nvidia-peermem": "Linux-OpenIB"}
    assert_loads(simnode, info, version, "NVIDIA UNIX x86_64 Kernel Module")
    report(capsys, f"kernel sources {version}", seconds)


@missing("nvidia-open-kernel-source")
def test_nvidias_real_open_modules_as_shipped_fail_on_a_kernel_with_exclude_bars(
        simnode, tmp_path, capsys):
    # What a node with this driver and this kernel really gets: nvidia-installer's build
    # error, with NVIDIA's real compiler message in its log (the modules are not installed).
    if not has_exclude_bars(simnode):
        pytest.skip(f"{simnode.kernel_release}'s pci_resize_resource() has no exclude_bars")
    version, seconds, status, log = run_real(
        simnode, tmp_path, "open", nvidia_open_sources=realparts.open_kernel_tree())
    assert status == 1
    assert re.search(r"nvidia/nv-pci\.c:\d+:\d+: error: too few arguments to function "
                     r"\W+pci_resize_resource\W", log), log[-4000:]
    # The agent's reason names the cause, not only the installer's generic step.
    lines = error_lines(log)
    assert lines[0] == ('ERROR: An error occurred while performing the step: "Building kernel '
                        'modules". See /var/log/nvidia-installer.log for details.')
    assert re.fullmatch(r"nv-pci\.c:\d+:\d+: error: too few arguments to function "
                        r"\W+pci_resize_resource\W.*", lines[1]), lines
    video = simnode.path(f"/lib/modules/{simnode.kernel_release}/kernel/drivers/video")
    assert not (video / "nvidia.ko").exists()
    report(capsys, f"open kernel modules {version} as shipped (build fails)", seconds)


@missing("nvidia-open-kernel-source")
def test_nvidias_real_open_kernel_modules_build_with_the_real_kbuild(simnode, tmp_path, capsys):
    # The open flavour, as 10de:2bb5 needs it: the node's default scenarios (a Blackwell).
    # Debian's tree plus the distributions' pci_resize_resource() fix, which on headers
    # without exclude_bars changes nothing (its conftest test fails there).
    tree = realparts.with_exclude_bars_fix(realparts.open_kernel_tree(), tmp_path / "open")
    version, seconds = install_real(simnode, tmp_path / "run", "open",
                                    nvidia_open_sources=tree)
    info = installed_modinfo(simnode)
    # NVIDIA's own licence strings for the open modules (535.261.03), not ours.
    assert {name: fields["license"] for name, fields in info.items()} == {
        "nvidia": "Dual MIT/GPL", "nvidia-modeset": "Dual MIT/GPL",
        "nvidia-uvm": "Dual MIT/GPL", "nvidia-drm": "Dual MIT/GPL",
        "nvidia-peermem": "Dual BSD/GPL"}
    assert_loads(simnode, info, version, "NVIDIA UNIX Open Kernel Module for x86_64")
    report(capsys, f"open kernel modules {version} (with the exclude_bars fix)", seconds)
