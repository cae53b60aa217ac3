"""NVIDIA's real parts from Debian's archive, for the simulated node (issue 13, 9).

Debian bookworm's `non-free` component carries NVIDIA's own `nvidia-smi` and
`libnvidia-ml1` (535.261.03) and `nvidia-kernel-source` (the real kernel interface
sources and conftest of that release); its `contrib` component carries
`nvidia-open-kernel-source` (the open kernel modules of the same release, laid out as
the .run's `kernel-open/`). `scripts/setup` adds both components and downloads the
packages with `apt-get download` (apt checks them against Debian's signed
indexes) into DEBS; nothing of them is ever installed on this machine. They are
unpacked with `dpkg-deb -x` into a cache and copied into a simulated host only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

DEBS = Path(os.environ.get("GRID_SIM_DEBS", "/var/cache/grid-sim/debs"))
UNPACKED = DEBS / "unpacked"
PACKAGES = ("nvidia-smi", "libnvidia-ml1", "nvidia-kernel-source", "nvidia-open-kernel-source")
SMI = "usr/lib/nvidia/current/nvidia-smi"
NVML = "usr/lib/x86_64-linux-gnu/nvidia/current"
KERNEL_TARBALL = "usr/src/nvidia-kernel.tar.xz"
OPEN_KERNEL_TARBALL = "usr/src/nvidia-open-kernel.tar.xz"
# Where the node gets them: where a driver's nvidia-smi and libnvidia-ml.so.1 live.
NODE_SMI = "/usr/bin/nvidia-smi"
NODE_LIBDIR = "/usr/lib/x86_64-linux-gnu"
# Without CAP_MKNOD, libnvidia-ml cannot create /dev/nvidiactl by itself, so a real
# nvidia-smi sees no device file, exactly as on a node without the driver.
NO_MKNOD = ("setpriv", "--bounding-set=-mknod", "--inh-caps=-mknod", "--")


def deb(package: str) -> Path | None:
    """The downloaded .deb of one of PACKAGES, or None (run scripts/setup)."""
    found = sorted(DEBS.glob(f"{package}_*_amd64.deb"))
    return found[-1] if found else None


def missing(*packages: str) -> list[str]:
    """Which of `packages` (default: all PACKAGES) are not downloaded."""
    return [p for p in packages or PACKAGES if deb(p) is None]


def unpacked(package: str) -> Path:
    """`dpkg-deb -x` of the package, once, into UNPACKED/<package>."""
    path = deb(package)
    if path is None:
        raise FileNotFoundError(f"{package} not in {DEBS}: run scripts/setup")
    dest = UNPACKED / path.stem
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(path), str(tmp)], check=True)
        tmp.rename(dest)
    return dest


def put_real_smi(node, *, with_nvml: bool = True) -> None:
    """NVIDIA's real nvidia-smi (and libnvidia-ml.so.1) as the node's driver would place them."""
    smi = node.path(NODE_SMI)
    smi.parent.mkdir(parents=True, exist_ok=True)
    if smi.is_symlink() or smi.exists():
        smi.unlink()
    shutil.copy2(unpacked("nvidia-smi") / SMI, smi)
    if not with_nvml:
        return
    libdir = node.path(NODE_LIBDIR)
    real = next(p for p in (unpacked("libnvidia-ml1") / NVML).glob("libnvidia-ml.so.*.*")
                if not p.is_symlink())
    lib = real.name
    shutil.copy2(real, libdir / lib)
    link = libdir / "libnvidia-ml.so.1"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(lib)


def _tree(package: str, tarball: str, name: str) -> Path:
    """The `modules/<name>` tree of a package's source tarball, unpacked once."""
    dest = UNPACKED / f"{name}-tree"
    tree = dest / "modules" / name
    if not (tree / "conftest.sh").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-xJf", str(unpacked(package) / tarball), "-C", str(dest)],
                       check=True)
    return tree


def kernel_tree() -> Path:
    """NVIDIA's real kernel interface sources (nvidia-kernel-source's tarball), unpacked once:
    the tree nvidia-installer builds (Makefile, Kbuild, conftest.sh, nvidia*/, the
    nv-kernel.o_binary core)."""
    return _tree("nvidia-kernel-source", KERNEL_TARBALL, "nvidia-kernel")


def open_kernel_tree() -> Path:
    """NVIDIA's real open kernel modules (nvidia-open-kernel-source's tarball), unpacked once.

    Laid out as the .run's `kernel-open/`: Makefile, Kbuild, conftest.sh, the Dual MIT/GPL
    interface sources and the prebuilt nv-kernel.o_binary and nv-modeset-kernel.o_binary
    cores (DWARF producer GCC 12.2.0: Debian compiled them from open-gpu-kernel-modules'
    src/), not the whole src/ tree.
    """
    return _tree("nvidia-open-kernel-source", OPEN_KERNEL_TARBALL, "nvidia-open-kernel")


# Linux commit 916bfc605c84 ("PCI: Fix restoring BARs on BAR resize rollback path") gave
# pci_resize_resource() a fourth argument, exclude_bars, and was backported to stable (Debian
# bookworm's 6.1.0-57 has it). NVIDIA's open nv-pci.c of 535.261.03 calls it with three, so
# the open modules no longer build there ("too few arguments to function
# 'pci_resize_resource'"; NVIDIA/open-gpu-kernel-modules#1272). The distributions' fix
# (Flatcar's nvidia-drivers overlay): a conftest test and both calls.
EXCLUDE_BARS_CONFTEST = """\
        pci_resize_resource_has_exclude_bars_arg)
            #
            # Determine if pci_resize_resource() takes exclude_bars (Linux 916bfc605c84,
            # backported to stable). Added for the simulated node, as distributions do.
            #
            CODE="
            #include <linux/pci.h>
            int conftest_pci_resize_resource_has_exclude_bars_arg(struct pci_dev *dev) {
                return pci_resize_resource(dev, 0, 0, 0);
            }"

            compile_check_conftest "$CODE" "NV_PCI_RESIZE_RESOURCE_HAS_EXCLUDE_BARS_ARG" "" "types"
        ;;

"""
RESIZE_CALL = "    r = pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size);\n"
RESIZE_CALLS = ("#if defined(NV_PCI_RESIZE_RESOURCE_HAS_EXCLUDE_BARS_ARG)\n"
                "    r = pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size, 0);\n"
                "#else\n" + RESIZE_CALL + "#endif\n")


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise ValueError(f"{path} changed: cannot find {old.strip()!r} once")
    path.write_text(text.replace(old, new))


def with_exclude_bars_fix(tree: Path, dest: Path) -> Path:
    """A copy of the open tree with the pci_resize_resource() fix; its path."""
    shutil.copytree(tree, dest, symlinks=True)
    anchor = "        pci_rebar_get_possible_sizes)\n"
    _patch(dest / "conftest.sh", anchor, EXCLUDE_BARS_CONFTEST + anchor)
    anchor = "NV_CONFTEST_TYPE_COMPILE_TESTS += dma_ops\n"
    _patch(dest / "nvidia" / "nvidia.Kbuild", anchor,
           anchor + "NV_CONFTEST_TYPE_COMPILE_TESTS += pci_resize_resource_has_exclude_bars_arg\n")
    _patch(dest / "nvidia" / "nv-pci.c", RESIZE_CALL, RESIZE_CALLS)
    return dest


def source_version(tree: Path) -> str:
    """The release of an NVIDIA kernel source tree (its Kbuild's -DNV_VERSION_STRING)."""
    found = re.search(r'-DNV_VERSION_STRING=\\"([0-9.]+)\\"', (tree / "Kbuild").read_text())
    if found is None:
        raise ValueError(f"no NV_VERSION_STRING in {tree / 'Kbuild'}")
    return found.group(1)
