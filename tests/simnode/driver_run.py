"""Build the fake GRID driver `.run` with Debian's real makeself (issue 3, item 3).

The archive is `NVIDIA-Linux-x86_64-<version>.run`, made with a copy of makeself's
header whose unknown-flag branch passes flags to the embedded installer (as NVIDIA's
does), plus `-x` to extract only. Inside: the fake `nvidia-installer`, the sources of
real (empty) kernel modules for both module types, the stub userspace (nvidia-smi,
nvidia-modprobe, nvidia-persistenced, nvidia-gridd, libnvidia-ml.so.1 as a real ELF),
and a cache of the .ko files the installer's own kbuild made here for each kernel
release with Debian headers on this machine, so one pytest session builds once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.simnode.host import machine_kernel_releases

DRIVER = Path(__file__).resolve().parent / "driver"
MAKESELF_HEADER = Path("/usr/share/makeself/makeself-header.sh")
MODULES = ("nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm", "nvidia-peermem")
LICENSES = {"kernel": "NVIDIA", "kernel-open": "Dual MIT/GPL"}
PAYLOAD = ("nvidia-installer", "nvidia-smi", "nvidia-modprobe", "nvidia-persistenced",
           "nvidia-gridd", "nvidia-gridd.service", "gridd.conf.template")
UNKNOWN_FLAG = '''    -*)
\techo Unrecognized flag : "\\$1" >&2
\tMS_Help
\texit 1
\t;;
'''
# NVIDIA's wrapper hands every flag it does not know to nvidia-installer, and has -x.
PASS_THROUGH = '''    -x|--extract-only)
\tscript=""
\tcleanup_script=""
\tkeep=y
\tshift
\t;;
    -*)
\tbreak ;;
'''


def module_version(version: str) -> str:
    """`580.105.08-grid-azure` -> `580.105.08`."""
    return version.split("-", 1)[0]


def pass_through_header(dest: Path) -> Path:
    """makeself's stock header with the flag pass-through NVIDIA's archives have."""
    text = MAKESELF_HEADER.read_text()
    if UNKNOWN_FLAG not in text:
        raise RuntimeError(f"{MAKESELF_HEADER} changed: cannot find its unknown-flag branch")
    dest.write_text(text.replace(UNKNOWN_FLAG, PASS_THROUGH))
    return dest


def write_module_sources(stage: Path, modver: str) -> None:
    """kernel/ (proprietary licence) and kernel-open/ (Dual MIT/GPL): one .c per module."""
    body = (DRIVER / "module.c").read_text()
    for sub, licence in LICENSES.items():
        folder = stage / sub
        folder.mkdir(parents=True)
        for name in MODULES:
            (folder / f"{name}.c").write_text(
                f'#define GRID_SIM_LICENSE "{licence}"\n#define GRID_SIM_VERSION "{modver}"\n'
                + body)
        (folder / "Kbuild").write_text(
            "obj-m := " + " ".join(f"{name}.o" for name in MODULES) + "\n")


def build_nvml(stage: Path, modver: str) -> None:
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", f'-DGRID_SIM_VERSION="{modver}"',
                    "-Wl,-soname,libnvidia-ml.so.1", "-o", str(stage / "libnvidia-ml.so"),
                    str(DRIVER / "nvml.c")], check=True, capture_output=True)


def prebuild(stage: Path, releases: list[str]) -> None:
    """Run the installer's own kbuild here once per release; the .run carries the .ko files."""
    for release in releases:
        subprocess.run(
            ["/usr/bin/python3", str(stage / "nvidia-installer"), "--build-only",
             f"--kernel-name={release}", f"--kernel-source-path=/usr/src/linux-headers-{release}",
             f"--output-dir={stage / 'prebuilt' / release}"],
            check=True, capture_output=True, text=True)


def build_fake_run(out_dir: Path, version: str = "580.105.08-grid-azure", *,
                   releases: list[str] | None = None,
                   nvidia_sources: Path | None = None,
                   nvidia_open_sources: Path | None = None) -> Path:
    """Make `<out_dir>/NVIDIA-Linux-x86_64-<version>.run`; returns its path.

    `releases` are the kernel releases whose .ko files are built now and cached in the
    archive (default: every Debian headers release here; [] = kbuild at install time).
    `nvidia_sources`: NVIDIA's real kernel interface tree (realparts.kernel_tree()) as the
    archive's `kernel/`, built at install time by its own Makefile and the real kbuild;
    `nvidia_open_sources` (realparts.open_kernel_tree()) likewise as its `kernel-open/`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modver = module_version(version)
    name = f"NVIDIA-Linux-x86_64-{version}"
    with tempfile.TemporaryDirectory(prefix="grid-sim-run-") as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        for item in PAYLOAD:
            shutil.copy2(DRIVER / item, stage / item)
            if not item.endswith((".service", ".template")):
                (stage / item).chmod(0o755)  # whatever mode the checkout gave it
        (stage / "grid-sim.json").write_text(
            json.dumps({"version": version, "module_version": modver}) + "\n")
        write_module_sources(stage, modver)
        for sub, tree in (("kernel", nvidia_sources), ("kernel-open", nvidia_open_sources)):
            if tree is not None:
                shutil.rmtree(stage / sub)
                shutil.copytree(tree, stage / sub, symlinks=True)
        build_nvml(stage, modver)
        prebuild(stage, machine_kernel_releases() if releases is None else releases)
        header = pass_through_header(Path(tmp) / "header.sh")
        run = out_dir / f"{name}.run"
        subprocess.run(
            ["makeself", "--nox11", "--header", str(header), str(stage), str(run),
             f"NVIDIA Accelerated Graphics Driver for Linux-x86_64 {modver}",
             "./nvidia-installer"],
            check=True, capture_output=True, text=True)
    return run
