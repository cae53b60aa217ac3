"""Fake apt-get/dpkg/dpkg-query: headers "installed" from the machine's own, a real dpkg lock.

Installing linux-headers-<release> bind-mounts the machine's Debian headers (kept
read-only under /var/lib/grid-sim/usr-src) into /usr/src and links
/lib/modules/<release>/build, so the kbuild that follows is real. The dpkg lock is a
real fcntl lock on /var/lib/dpkg/lock-frontend, as apt takes it.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import foreignsim
import gccsim
import simlib as s

STASH = Path("/var/lib/grid-sim/usr-src")
LOCKS = (Path("/var/lib/dpkg/lock-frontend"), Path("/var/lib/dpkg/lock"))
NOTICED = s.STATE / "dpkg-lock-noticed"
BASE = {"build-essential", "gcc", "make", "libc6-dev", "kmod", "pkg-config", "libc6"}
EXTRA = {"dkms", "libglvnd-dev"}
MIRROR = "http://azure.archive.ubuntu.com/ubuntu"
LOCK_HOLD_AFTER_NOTICE = 3.0
LOCK_HOLD_MAX = 20.0


# -- headers -----------------------------------------------------------------------------------


def header_dirs(release: str) -> list[str]:
    # Debian: linux-headers-6.1.0-57-cloud-amd64 shares linux-headers-6.1.0-57-common.
    abi = re.match(r"\d+\.\d+\.\d+-\d+", release)
    flavour = abi.group(0) if abi else release.rsplit("-", 1)[0]
    return [f"linux-headers-{release}", f"linux-headers-{flavour}-common"]


def headers_installed(release: str) -> bool:
    return Path(f"/usr/src/linux-headers-{release}/Makefile").exists()


def install_headers(release: str) -> None:
    for name in header_dirs(release):
        target = Path("/usr/src") / name
        if (target / "Makefile").exists() or not (STASH / name).is_dir():
            continue
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(STASH / name), str(target)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
    link_build(release)
    if s.has("host-gcc-11"):  # headers as Ubuntu ships them: no compiler pin
        gccsim.hide_pin(release)


def link_build(release: str) -> None:
    mods = Path("/lib/modules") / release
    mods.mkdir(parents=True, exist_ok=True)
    for link, name in (("build", header_dirs(release)[0]), ("source", header_dirs(release)[1])):
        path = mods / link
        if not path.is_symlink():
            path.symlink_to(f"/usr/src/{name}")


def remove_headers(release: str) -> None:
    for name in header_dirs(release):
        target = Path("/usr/src") / name
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], check=True)
        if target.is_dir():
            target.rmdir()
    for link in ("build", "source"):
        path = Path("/lib/modules") / release / link
        if path.is_symlink():
            path.unlink()


def installable(pkg: str) -> bool:
    if pkg.startswith("linux-headers-"):
        return (STASH / pkg).is_dir()
    return pkg in BASE | EXTRA or gccsim.installable(pkg)


def installed(pkg: str) -> bool:
    if pkg.startswith("linux-headers-"):
        return (Path("/usr/src") / pkg / "Makefile").exists() or (
            pkg.endswith("-common") and (Path("/usr/src") / pkg).is_dir())
    if pkg == "dkms":
        return Path("/usr/sbin/dkms").exists()
    if gccsim.installable(pkg):
        return gccsim.installed(pkg)
    return pkg in BASE


# -- the dpkg lock -----------------------------------------------------------------------------


def lock_holder() -> int | None:
    """The PID holding the dpkg frontend lock, as apt reports it."""
    for lock in LOCKS:
        if not lock.exists():
            continue
        with lock.open("rb") as f:
            query = fcntl.fcntl(f, fcntl.F_GETLK, _flock(fcntl.F_WRLCK))
        l_type, pid = _unflock(query)
        if l_type != fcntl.F_UNLCK:
            return pid
    return None


def _flock(l_type: int) -> bytes:
    import struct
    return struct.pack("hhqqi", l_type, 0, 0, 0, 0)


def _unflock(data: bytes) -> tuple[int, int]:
    import struct
    l_type, _, _, _, pid = struct.unpack("hhqqi", data)
    return l_type, pid


def start_lock_holder() -> None:
    """unattended-upgrades holding the dpkg lock: a few seconds after someone notices."""
    if s.holder_pid("unattended-upgr"):
        return
    NOTICED.unlink(missing_ok=True)
    for lock in LOCKS:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    if s.daemonize("unattended-upgr"):
        handles = [lock.open("r+b") for lock in LOCKS]
        for f in handles:
            fcntl.lockf(f, fcntl.LOCK_EX)
        started = time.monotonic()
        while time.monotonic() - started < LOCK_HOLD_MAX:
            if NOTICED.exists() and time.time() - NOTICED.stat().st_mtime > LOCK_HOLD_AFTER_NOTICE:
                break
            time.sleep(0.1)
        (s.STATE / "unattended-upgr.pid").unlink(missing_ok=True)
        os._exit(0)
    for _ in range(300):
        if lock_holder():
            return
        time.sleep(0.01)


def take_lock(timeout: float) -> None:
    """Wait up to `timeout` for the lock like apt's DPkg::Lock::Timeout, else fail like apt."""
    if s.holder_pid("unattended-upgr") and not NOTICED.exists():
        NOTICED.write_text("")
    deadline = time.monotonic() + timeout
    while (pid := lock_holder()) is not None:
        if time.monotonic() >= deadline:
            lock = LOCKS[0]
            s.die(f"E: Could not get lock {lock}. It is held by process {pid} (unattended-upgr)\n"
                  "N: Be aware that removing the lock file is not a solution and may break "
                  "your system.\nE: Unable to acquire the dpkg frontend lock "
                  f"({lock}), is another process using it?", 100)
        print(f"Waiting for cache lock: Could not get lock {LOCKS[0]}. It is held by process "
              f"{pid} (unattended-upgr)...", file=sys.stderr)
        time.sleep(0.5)


# -- commands ----------------------------------------------------------------------------------


def lock_timeout(args: list[str]) -> float:
    for i, arg in enumerate(args):
        value = arg if "=" in arg else ""
        if arg == "-o" and i + 1 < len(args):
            value = args[i + 1]
        if value.lower().startswith("dpkg::lock::timeout="):
            return float(value.split("=", 1)[1])
    return 0.0


def apt_get(args: list[str]) -> None:
    words = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] != "-o"]
    if not words:
        s.die("E: Invalid operation", 100)
    verb, pkgs = words[0], words[1:]
    if {"-s", "--simulate", "--dry-run"} & set(args):
        apt_simulate(verb, pkgs)  # no lock, no change, as apt-get -s
        return
    take_lock(lock_timeout(args))
    if verb == "update":
        apt_update()
    elif verb == "install":
        apt_install(pkgs)
    elif verb in ("purge", "remove"):
        apt_purge(pkgs)
    else:
        s.die(f"E: Invalid operation {verb} (simulated node)", 100)


def apt_update() -> None:
    if s.has("apt-offline"):
        print(f"Err:1 {MIRROR} jammy InRelease\n  Temporary failure resolving "
              "'azure.archive.ubuntu.com'\nReading package lists...")
        print(f"W: Failed to fetch {MIRROR}/dists/jammy/InRelease  Temporary failure resolving "
              "'azure.archive.ubuntu.com'\nW: Some index files failed to download. They have "
              "been ignored, or old ones used instead.", file=sys.stderr)
        return
    print(f"Hit:1 {MIRROR} jammy InRelease\nReading package lists...")


def apt_install(pkgs: list[str]) -> None:
    print("Reading package lists...\nBuilding dependency tree...\nReading state information...")
    unknown = [p for p in pkgs if not installable(p)]
    if unknown:
        s.die("\n".join(f"E: Unable to locate package {p}" for p in unknown), 100)
    todo = [p for p in pkgs if not installed(p)]
    for pkg in pkgs:
        if pkg not in todo:
            print(f"{pkg} is already the newest version.")
    if not todo:
        return
    if s.has("apt-offline"):
        lines = [f"E: Failed to fetch {MIRROR}/pool/main/{p[0]}/{p}/{p}_1_amd64.deb  "
                 "Temporary failure resolving 'azure.archive.ubuntu.com'" for p in todo]
        lines.append("E: Unable to fetch some archives, maybe run apt-get update or try with "
                     "--fix-missing?")
        s.die("\n".join(lines), 100)
    for pkg in todo:
        print(f"Setting up {pkg} ...")
        if pkg.startswith("linux-headers-") and not pkg.endswith("-common"):
            install_headers(pkg.removeprefix("linux-headers-"))
        elif pkg == "dkms":
            Path("/usr/sbin/dkms").symlink_to("/usr/local/lib/grid-sim/stub")
        elif gccsim.installable(pkg):
            gccsim.install(pkg)


def apt_simulate(verb: str, pkgs: list[str]) -> None:
    print("NOTE: This is only a simulation!\nReading package lists...\n"
          "Building dependency tree...\nReading state information...")
    if verb not in ("purge", "remove"):
        s.die(f"E: the simulated node simulates purge and remove only, not {verb}", 100)
    word = "Purg" if verb == "purge" else "Remv"
    for pkg in pkgs:
        if foreignsim.is_installed(pkg):
            print(f"{word} {pkg} [{foreignsim.DEB_VERSION}]")


def apt_purge(pkgs: list[str]) -> None:
    print("Reading package lists...\nBuilding dependency tree...\nReading state information...")
    for pkg in pkgs:
        if foreignsim.purge(pkg):
            print(f"Removing {pkg} ({foreignsim.DEB_VERSION}) ...\nPurging configuration files "
                  f"for {pkg} ({foreignsim.DEB_VERSION}) ...")
        else:
            print(f"Package '{pkg}' is not installed, so not removed")


def dpkg_query(args: list[str]) -> None:
    pkgs = [a for a in args if not a.startswith("-")]
    fmt = next((a.split("=", 1)[1] for a in args if a.startswith(("-f=", "--showformat="))),
               None)
    code = 0
    for pkg in pkgs:
        if not installed(pkg):
            print(f"dpkg-query: package '{pkg}' is not installed and no information is "
                  "available", file=sys.stderr)
            code = 1
            continue
        if fmt is not None:
            sys.stdout.write(fmt.replace("${Status}", "install ok installed")
                             .replace("${Package}", pkg).replace("${Version}", "1.0")
                             .replace("\\n", "\n"))
        else:
            print(f"Package: {pkg}\nStatus: install ok installed\nVersion: 1.0\n")
    sys.exit(code)


def dpkg(args: list[str]) -> None:
    if any(a in ("-s", "--status", "-l", "--list", "-W", "--show") for a in args):
        dpkg_query([a for a in args if a not in ("-s", "--status", "-l", "--list")])
    if "--configure" in args:
        take_lock(0)
        return
    s.die("dpkg: the simulated node supports -s, -l and --configure only", 2)


COMMANDS = {"apt-get": apt_get, "dpkg": dpkg, "dpkg-query": dpkg_query}


def main(cmd: str) -> None:
    COMMANDS[cmd](sys.argv[1:])
