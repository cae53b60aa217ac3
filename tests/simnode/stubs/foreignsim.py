"""Scenario foreign-cuda-driver: a CUDA driver from apt is already on the node (issue 13, 7).

As an AKS image or an Ubuntu host carries it: dpkg knows its packages (a real-format
/var/lib/dpkg/status and info/<pkg>.list), its DKMS tree is registered
(/var/lib/dkms/nvidia/<v>, /usr/src/nvidia-<v>) and built (updates/dkms/nvidia.ko, which
modprobe prefers), its own nvidia-smi and libnvidia-ml are in place, and its modules are
loaded. The container toolkit (libnvidia-container1, nvidia-container-toolkit) sits next
to it, as on AKS. `apt-get purge` (pkgsim) removes a package's listed files and its
stanza; without the node's `dkms` the DKMS tree and built modules stay behind.

With the node's `dkms` (scenario `dkms` in the same set) nvidia-dkms-535's postinst is
real: `dkms install nvidia/535.183.01 -k <kernel>` registers its source with the dkms
stub, which builds it with kbuild (three empty modules, version 535.183.01, licence NVIDIA)
and installs them under updates/dkms; its prerm (dh_dkms) runs `dkms remove` on a purge
while `dkms status` still lists it. Without dkms the tree and one nvidia.ko carrying just
the .modinfo are laid down by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import simlib as s

VERSION = "535.183.01"
DEB_VERSION = f"{VERSION}-0ubuntu0.22.04.1"
STATUS = Path("/var/lib/dpkg/status")
INFO = Path("/var/lib/dpkg/info")
LIB = "/usr/lib/x86_64-linux-gnu"
SRC = Path(f"/usr/src/nvidia-{VERSION}")
KMODS = ("nvidia", "nvidia-modeset", "nvidia-uvm")
MODULE_C = f"""/* nvidia-dkms-535 of the simulated node: a real, empty module (never loaded). */
#include <linux/init.h>
#include <linux/module.h>

static int __init grid_sim_init(void) {{ return 0; }}
static void __exit grid_sim_exit(void) {{ }}
module_init(grid_sim_init);
module_exit(grid_sim_exit);

MODULE_LICENSE("NVIDIA");
MODULE_VERSION("{VERSION}");
"""
# nvidia-dkms-535's dkms.conf, less NVIDIA's own Makefile: DKMS's default make is kbuild.
DKMS_CONF = f'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="{VERSION}"\nAUTOINSTALL="yes"\n' + \
    "".join(f'BUILT_MODULE_NAME[{i}]="{m}"\nDEST_MODULE_LOCATION[{i}]="/kernel/drivers/char/drm"\n'
            for i, m in enumerate(KMODS))
SOURCES = ("dkms.conf", "Kbuild", *(f"{m}.c" for m in KMODS))
# package -> the files it installed (what `dpkg -L` lists)
PACKAGES = {
    "cuda-drivers-535": (),
    "nvidia-driver-535": (),
    "nvidia-dkms-535": tuple(f"/usr/src/nvidia-{VERSION}/{name}" for name in SOURCES),
    "nvidia-kernel-common-535": (),
    "libnvidia-compute-535": (f"{LIB}/libnvidia-ml.so.{VERSION}", f"{LIB}/libnvidia-ml.so.1"),
    "nvidia-utils-535": ("/usr/bin/nvidia-smi",),
}
TOOLKIT = {"libnvidia-container1": "1.17.8-1", "nvidia-container-toolkit": "1.17.8-1"}
SMI = f"""#!/bin/sh
# nvidia-smi of nvidia-utils-535 (simulated): it speaks to the 535 driver only.
echo "Failed to initialize NVML: Driver/library version mismatch"
echo "NVML library version: {VERSION.rsplit('.', 1)[0]}"
exit 18
"""
STACK = ("nvidia", "nvidia_modeset", "nvidia_uvm")


def stanza(package: str, version: str) -> str:
    return (f"Package: {package}\nStatus: install ok installed\nPriority: optional\n"
            f"Section: non-free/libs\nInstalled-Size: 1\nMaintainer: Ubuntu Developers\n"
            f"Architecture: amd64\nVersion: {version}\nDescription: {package} (grid-sim)\n")


def ko_bytes(release: str) -> bytes:
    """The .modinfo of a DKMS-built 535 nvidia.ko for this kernel (what modprobe reads)."""
    fields = [f"version={VERSION}", "license=NVIDIA", "name=nvidia",
              f"vermagic={release} SMP preempt mod_unload modversions "]
    return b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x00".join(f.encode() for f in fields) + b"\x00"


def _write(path: str | Path, data: str | bytes, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    path.chmod(mode)


def installed() -> bool:
    return STATUS.exists() and "Package: nvidia-driver-535\n" in STATUS.read_text()


def apply() -> None:
    """Put the CUDA driver on the node (once: a purge is not undone by a later apply)."""
    marker = Path("/var/lib/grid-sim/foreign-cuda-driver")
    if marker.exists():
        return
    release = s.kernel_release()
    old = STATUS.read_text() if STATUS.exists() else ""
    stanzas = [stanza(p, DEB_VERSION) for p in PACKAGES]
    stanzas += [stanza(p, v) for p, v in TOOLKIT.items()]
    _write(STATUS, (old.rstrip("\n") + "\n\n" if old.strip() else "") + "\n".join(stanzas))
    for package, files in PACKAGES.items():
        _write(INFO / f"{package}.list", "".join(f"{f}\n" for f in files))
    write_sources()
    if shutil.which("dkms"):
        dkms_install(release)
    else:
        lay_down_dkms(release)
    _write(f"{LIB}/libnvidia-ml.so.{VERSION}", b"\x7fELF (libnvidia-ml 535, grid-sim)\n")
    link = Path(f"{LIB}/libnvidia-ml.so.1")
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"libnvidia-ml.so.{VERSION}")
    _write("/usr/bin/nvidia-smi", SMI, 0o755)
    if not s.loaded("nvidia"):
        for name in STACK:
            s.mark_loaded(name, VERSION, "proprietary")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def write_sources() -> None:
    _write(SRC / "dkms.conf", DKMS_CONF)
    _write(SRC / "Kbuild", "obj-m := " + " ".join(f"{m}.o" for m in KMODS) + "\n")
    for name in KMODS:
        _write(SRC / f"{name}.c", MODULE_C)


def dkms_install(release: str) -> None:
    """nvidia-dkms-535's postinst with dkms installed: DKMS adds, builds and installs it."""
    done = subprocess.run(["dkms", "install", f"nvidia/{VERSION}", "-k", release],
                          capture_output=True, text=True)
    if done.returncode != 0:
        s.die(f"foreign-cuda-driver: dkms install nvidia/{VERSION} failed "
              f"({done.returncode}): {done.stdout}{done.stderr}")


def lay_down_dkms(release: str) -> None:
    """No dkms command: a registered, built tree and its nvidia.ko, written by hand."""
    tree = Path(f"/var/lib/dkms/nvidia/{VERSION}")
    (tree / "source").parent.mkdir(parents=True, exist_ok=True)
    if not (tree / "source").is_symlink():
        (tree / "source").symlink_to(SRC)
    _write(tree / release / "x86_64/module/nvidia.ko", ko_bytes(release))
    _write(f"/lib/modules/{release}/updates/dkms/nvidia.ko", ko_bytes(release))


def is_installed(package: str) -> bool:
    return STATUS.exists() and f"Package: {package}\n" in STATUS.read_text()


def purge(package: str) -> bool:
    """`apt-get purge` of one package: its listed files and its status stanza go."""
    if not STATUS.exists():
        return False
    stanzas = STATUS.read_text().split("\n\n")
    keep = [st for st in stanzas if not st.startswith(f"Package: {package}\n")]
    if len(keep) == len(stanzas):
        return False
    prerm(package)
    listing = INFO / f"{package}.list"
    for name in (listing.read_text().splitlines() if listing.exists() else []):
        path = Path(name)
        if path.is_symlink() or path.is_file():
            path.unlink()
        if path.parent.is_dir() and path.parent.name.startswith("nvidia-") and \
                not any(path.parent.iterdir()):
            path.parent.rmdir()
    listing.unlink(missing_ok=True)
    STATUS.write_text("\n\n".join(keep))
    return True


def prerm(package: str) -> None:
    """nvidia-dkms-535's prerm (dh_dkms): `dkms remove --all` when dkms still lists it."""
    if package != "nvidia-dkms-535" or not shutil.which("dkms"):
        return
    listed = subprocess.run(["dkms", "status", "-m", "nvidia", "-v", VERSION],
                            capture_output=True, text=True).stdout
    if listed.strip():
        subprocess.run(["dkms", "remove", "-m", "nvidia", "-v", VERSION, "--all"], check=False)
