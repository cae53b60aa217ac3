"""Opt-in tier: the .run builds NVIDIA's real kernel interface sources (issue 13, item 9).

Debian's nvidia-kernel-source (535.261.03: Makefile, Kbuild, conftest.sh, the nvidia*/
interface sources and the nv-kernel.o_binary core) is the `.run`'s `kernel/`; inside the
simulated node the fake installer builds it as nvidia-installer does (NVIDIA's Makefile,
real conftest against Debian's 6.1 headers, real kbuild and modpost). The modules are
installed in the node and "loaded" by its fake modprobe, never by this machine's kernel.
Minutes on 2 cores, so off by default: GRID_SIM_REAL_NVIDIA_SOURCES=1 (marker
nvidia_sources). It prints its build time.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.simnode import realparts
from tests.simnode.driver_run import build_fake_run

pytestmark = [
    pytest.mark.simnode,
    pytest.mark.nvidia_sources,
    pytest.mark.skipif(os.environ.get("GRID_SIM_REAL_NVIDIA_SOURCES") != "1",
                       reason="opt-in (minutes): GRID_SIM_REAL_NVIDIA_SOURCES=1"),
    pytest.mark.skipif("nvidia-kernel-source" in realparts.missing(),
                       reason=f"nvidia-kernel-source not in {realparts.DEBS}: run scripts/setup"),
    pytest.mark.timeout(3600),
]

RUN = "/var/tmp/NVIDIA-Linux-x86_64-real.run"
_MODINFO = re.compile(rb"(?:^|\x00)(version|license|vermagic|name)=([^\x00]*)")


def modinfo(data: bytes) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in _MODINFO.findall(data)}


def test_nvidias_real_kernel_sources_build_with_the_real_kbuild(simnode, tmp_path, capsys):
    tree = realparts.kernel_tree()
    version = realparts.source_version(tree)
    run = build_fake_run(tmp_path, f"{version}-debian", releases=[], nvidia_sources=tree)
    target = simnode.path(RUN)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run, target)
    simnode.set_scenarios("proprietary-gpu")  # 535 drives no Blackwell: another GPU's node
    started = time.monotonic()
    out = simnode.exec(["sh", RUN, "--silent", "--no-drm", "-M", "proprietary"],
                       check=False, timeout=3600)
    seconds = time.monotonic() - started
    log = simnode.path("/var/log/nvidia-installer.log").read_text()
    assert out.returncode == 0, log[-4000:]
    assert "CONFTEST: " in log  # NVIDIA's own conftest ran against the headers
    release = simnode.kernel_release
    video = simnode.path(f"/lib/modules/{release}/kernel/drivers/video")
    info = {name: modinfo((video / f"{name}.ko").read_bytes())
            for name in ("nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm")}
    for name, fields in info.items():
        assert fields["vermagic"].startswith(f"{release} SMP "), (name, fields)
        assert fields.get("version", version) == version, (name, fields)
    # NVIDIA's own licence strings (535.261.03), not ours.
    assert {name: fields["license"] for name, fields in info.items()} == {
        "nvidia": "NVIDIA", "nvidia-modeset": "NVIDIA", "nvidia-uvm": "Dual MIT/GPL",
        "nvidia-drm": "MIT"}
    peermem = modinfo((video / "nvidia-peermem.ko").read_bytes())
    assert peermem["license"] == "Linux-OpenIB"
    # The node's modprobe checks the real vermagic and licence, and never asks the kernel.
    simnode.exec(["modprobe", "-a", "nvidia", "nvidia-uvm", "nvidia-modeset"])
    assert simnode.path("/sys/module/nvidia/version").read_text().strip() == version
    proc = simnode.path("/proc/driver/nvidia/version").read_text()
    assert "NVIDIA UNIX x86_64 Kernel Module" in proc
    with capsys.disabled():
        print(f"\nreal NVIDIA kernel sources {version}: installer with kbuild took "
              f"{seconds:.0f} s in the simulated node ({os.cpu_count()} CPUs)")
