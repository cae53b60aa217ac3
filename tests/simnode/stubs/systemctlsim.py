"""Fake systemctl: no systemd runs in the namespace, so units are records in files.

Enabled = the real `multi-user.target.wants` symlink in /etc (kept across a reboot);
active = a file under /run/grid-sim/units (emptied by a reboot, then re-made for the
enabled units, as boot would).
"""

from __future__ import annotations

import sys
from pathlib import Path

import simlib as s

UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"),
             Path("/usr/lib/systemd/system"))
WANTS = Path("/etc/systemd/system/multi-user.target.wants")
ACTIVE = s.STATE / "units"


def unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


def unit_file(unit: str) -> Path | None:
    for folder in UNIT_DIRS:
        if (folder / unit).is_file():
            return folder / unit
    return None


def is_enabled(unit: str) -> bool:
    return (WANTS / unit).is_symlink()


def is_active(unit: str) -> bool:
    return (ACTIVE / unit).exists()


def set_active(unit: str, on: bool) -> None:
    ACTIVE.mkdir(parents=True, exist_ok=True)
    if on:
        (ACTIVE / unit).write_text("active\n")
    else:
        (ACTIVE / unit).unlink(missing_ok=True)


def need_unit(unit: str, verb: str) -> Path:
    path = unit_file(unit)
    if path is None:
        if verb in ("enable", "disable"):
            s.die(f"Failed to {verb} unit: Unit file {unit} does not exist.", 1)
        s.die(f"Failed to {verb} {unit}: Unit {unit} not found.", 5)
    return path  # type: ignore[return-value]


def enable(unit: str) -> None:
    path = need_unit(unit, "enable")
    WANTS.mkdir(parents=True, exist_ok=True)
    if not is_enabled(unit):
        (WANTS / unit).symlink_to(path)
        print(f"Created symlink {WANTS / unit} \u2192 {path}.", file=sys.stderr)


def main(_cmd: str) -> None:
    argv = sys.argv[1:]
    quiet = "--quiet" in argv or "-q" in argv
    now = "--now" in argv
    args = [a for a in argv if a not in ("--quiet", "-q", "--no-pager", "--system", "--now")]
    if not args:
        s.die("systemctl: the simulated node supports unit verbs only")
    verb, units = args[0], [unit_name(u) for u in args[1:]]
    if verb in ("daemon-reload", "reset-failed"):
        return
    code = 0
    for unit in units:
        code = max(code, act(verb, unit, now=now, quiet=quiet))
    sys.exit(code)


def act(verb: str, unit: str, *, now: bool, quiet: bool) -> int:
    """One verb on one unit; returns systemctl's exit code for it."""
    if verb == "enable":
        enable(unit)
        if now:
            set_active(unit, True)
    elif verb == "disable":
        (WANTS / unit).unlink(missing_ok=True)
        if now:
            set_active(unit, False)
    elif verb in ("start", "restart", "try-restart", "reload-or-restart"):
        need_unit(unit, verb)
        set_active(unit, True)
    elif verb == "stop":
        set_active(unit, False)
    elif verb in ("is-active", "is-enabled"):
        yes = is_active(unit) if verb == "is-active" else is_enabled(unit)
        if not quiet:
            words = ("active", "inactive") if verb == "is-active" else ("enabled", "disabled")
            print(words[0] if yes else words[1])
        return 0 if yes else (3 if verb == "is-active" else 1)
    elif verb == "status":
        state = "active (running)" if is_active(unit) else "inactive (dead)"
        print(f"\u25cf {unit}\n     Active: {state}")
        return 0 if is_active(unit) else 3
    else:
        s.die(f"systemctl: unknown verb {verb} (simulated node)")
    return 0
