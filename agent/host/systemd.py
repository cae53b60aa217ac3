"""systemd on the host: is it booted, which units exist, their state (one place for all rooms)."""

from __future__ import annotations

from agent.errors import HostCommandError, HostCommandMissing
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


def host_has_systemd(root: HostRoot) -> bool:
    """systemd's own test (sd_booted): /run/systemd/system exists."""
    return root.path("/run/systemd/system").is_dir()


def unit_exists(root: HostRoot, unit: str) -> bool:
    return any(root.exists(f"{d}/{unit}") for d in UNIT_DIRS)


def unit_status(runner: HostRunner, unit: str) -> tuple[bool, bool]:
    """(enabled, active) from `systemctl is-enabled` / `is-active` (changes nothing)."""
    enabled, active = (
        runner.run(["systemctl", verb, "--quiet", unit], check=False, timeout=30).ok
        for verb in ("is-enabled", "is-active"))
    return enabled, active


def unit_state(runner: HostRunner, unit: str, *, timeout: float) -> str:
    """The unit's `systemctl is-active` word; exit 3 (inactive) is an answer, not an error."""
    try:
        result = runner.run(["systemctl", "is-active", unit], check=False, timeout=timeout)
    except (HostCommandError, HostCommandMissing) as exc:
        return f"unknown ({exc.message})"
    words = result.stdout.split()
    return words[0] if words else f"unknown (exit {result.returncode})"
