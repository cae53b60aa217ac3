"""Kernels installed on the host but not running: what the next reboot may boot into.

Looks only at files: `/lib/modules/<release>/` with a kernel image in `/boot`
(`vmlinuz-<release>`, as Ubuntu's and Debian's linux-image packages install it), and
Ubuntu's `/var/run/reboot-required.pkgs` (update-notifier lists `linux-image-<release>`
there when a kernel update waits for a reboot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.host.paths import MODULES_DIR
from agent.host.root import HostRoot

REBOOT_REQUIRED_PKGS = "/run/reboot-required.pkgs"  # /var/run is a link to /run
_IMAGE_PKG = re.compile(r"^linux-image-(?:unsigned-)?(\d+\.\d+\S*)$")
MAX_KERNELS = 3  # newest first: a host with many old kernels builds for the likely next ones


@dataclass(frozen=True)
class PendingKernel:
    release: str
    why: str  # "newer kernel installed" | "named in reboot-required.pkgs"


def version_key(release: str) -> list[tuple[int, int | str]]:
    """Natural order: 6.8.0-1020-azure after 6.8.0-1017-azure, 6.10 after 6.9."""
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", release) if part]


def installed_kernels(root: HostRoot) -> list[str]:
    """Releases with both a module tree and a kernel image in /boot, oldest first."""
    try:
        trees = [p.name for p in root.path(MODULES_DIR).iterdir() if p.is_dir()]
    except OSError:
        return []
    found = [rel for rel in trees
             if root.exists(f"/boot/vmlinuz-{rel}") or root.exists(f"/boot/vmlinux-{rel}")]
    return sorted(found, key=version_key)


def reboot_required_kernels(root: HostRoot) -> list[str]:
    """Kernel releases update-notifier says are waiting for a reboot."""
    text = root.read_text(REBOOT_REQUIRED_PKGS, "") or ""
    found = []
    for line in text.splitlines():
        match = _IMAGE_PKG.match(line.strip())
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


def pending_kernels(root: HostRoot, running: str) -> list[PendingKernel]:
    """Installed kernels the next boot may pick: newer than the running one, or named by
    reboot-required.pkgs (never the running one, never one without a kernel image)."""
    installed = installed_kernels(root)
    named = set(reboot_required_kernels(root)) & set(installed)
    out: list[PendingKernel] = []
    for rel in sorted(installed, key=version_key, reverse=True):
        if rel == running:
            continue
        if rel in named:
            out.append(PendingKernel(rel, "named in reboot-required.pkgs"))
        elif version_key(rel) > version_key(running):
            out.append(PendingKernel(rel, "newer kernel installed"))
    return out[:MAX_KERNELS]
