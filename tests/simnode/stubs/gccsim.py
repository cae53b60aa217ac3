"""Scenario host-gcc-11: the node's default gcc is Debian's real gcc-11 (issue 13, item 4).

Ubuntu 22.04's default gcc is 11 while its HWE 6.x kernels are built by gcc-12 with
CONFIG_INIT_STACK_ALL_ZERO=y. The node gets that shape from real parts: `gcc`/`cc`
resolve to the machine's gcc-11, gcc-12 is not installed (stashed; the node's apt-get
installs it back), and the build tree's Debian-only compiler pin (`.kernelvariables`
`CC = ...gcc-12`; Ubuntu's headers have none) is hidden by a bind-mounted copy without
that line, so kbuild runs `gcc` as on Ubuntu. Nothing is faked about the failure: the
real kbuild with the real gcc-11 rejects `-ftrivial-auto-var-init=zero`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import simlib as s

BIN = Path("/usr/bin")
STASH = Path("/usr/lib/grid-sim-stash")  # on /usr: a rename, not a copy
# What the scenario makes the default compiler links (the machine's are saved beside the
# stash and put back when the scenario goes).
OLD_GCC = {"gcc": "gcc-11", "x86_64-linux-gnu-gcc": "gcc-11"}
PACKAGE_FILES = {"gcc-12": ("gcc-12", "x86_64-linux-gnu-gcc-12")}
STRIPPED = Path("/var/lib/grid-sim")  # kernelvariables-ubuntu-<release>: per kernel


def kernelvariables(release: str) -> Path:
    return Path(f"/usr/src/linux-headers-{release}/.kernelvariables")


def _relink(name: str, target: str, *, save: bool = False) -> None:
    link = BIN / name
    saved = STASH / f"{name}.link"
    if save and link.is_symlink() and not saved.exists():
        STASH.mkdir(parents=True, exist_ok=True)
        saved.write_text(os.readlink(link))
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def installed(package: str) -> bool:
    return all((BIN / name).exists() for name in PACKAGE_FILES[package])


def installable(package: str) -> bool:
    return package in PACKAGE_FILES


def install(package: str) -> None:
    """apt-get install gcc-12: its commands come back from the stash."""
    for name in PACKAGE_FILES[package]:
        stashed = STASH / name
        if stashed.is_symlink() or stashed.exists():
            stashed.rename(BIN / name)


def _remove(package: str) -> None:
    STASH.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_FILES[package]:
        path = BIN / name
        if path.is_symlink() or path.exists():
            path.rename(STASH / name)


def hide_pin(release: str) -> None:
    """Ubuntu's headers have no compiler pin: hidden for every kernel's headers (the next
    kernel's too, when installed under this scenario)."""
    pinned = kernelvariables(release)
    if not pinned.exists() or os.path.ismount(pinned):
        return
    stripped = STRIPPED / f"kernelvariables-ubuntu-{release}"
    stripped.parent.mkdir(parents=True, exist_ok=True)
    lines = [ln for ln in pinned.read_text().splitlines(keepends=True)
             if not ln.lstrip().startswith("CC ")]
    stripped.write_text("".join(lines))
    subprocess.run(["mount", "--bind", str(stripped), str(pinned)], check=True)


def _show_pins() -> None:
    for pinned in sorted(Path("/usr/src").glob("linux-headers-*/.kernelvariables")):
        if os.path.ismount(pinned):
            subprocess.run(["umount", str(pinned)], check=True)


def apply(on: bool) -> None:
    release = s.kernel_release()
    if on:
        if not (BIN / "gcc-11").exists():
            s.die("host-gcc-11: the machine has no gcc-11 (scripts/setup installs it)")
        for name, target in OLD_GCC.items():
            _relink(name, target, save=True)
        _remove("gcc-12")
        hide_pin(release)
    else:
        install("gcc-12")
        for name in OLD_GCC:
            saved = STASH / f"{name}.link"
            if saved.exists():
                _relink(name, saved.read_text())
                saved.unlink()
        _show_pins()
