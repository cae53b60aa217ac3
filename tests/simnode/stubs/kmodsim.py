"""Fake modprobe/rmmod/lsmod/insmod: module state is files, never the real kernel."""

from __future__ import annotations

import sys

import simlib as s

REQUIRES_OPEN = (
    "NVRM: The NVIDIA GPU {slot} (PCI ID: 10de:2bb5)",
    "NVRM: installed in this system requires use of the NVIDIA open kernel modules.",
    "NVRM: GPU {slot}: RmInitAdapter failed! (0x22:0x56:884)",
)


def requires_open(mtype: str | None) -> bool:
    """10de:2bb5 (Blackwell) refuses the proprietary module, as the real GPU does: the load
    fails (scenario requires-open names it; it is the default), or (requires-open-loads,
    the other shape in docs/design/gpu-operator-contract.md) it loads and nvidia-smi finds
    no devices. Scenario proprietary-gpu stands for a GPU the proprietary module drives."""
    if mtype != "proprietary" or s.has("proprietary-gpu"):
        return False
    s.kmsg(*(line.format(slot=s.GPU_SLOT) for line in REQUIRES_OPEN))
    if not s.has("requires-open-loads"):
        s.die("modprobe: ERROR: could not insert 'nvidia': No such device")
    return True


def load(name: str) -> None:
    """Load one module and its dependencies, as modprobe does; exits 1 like it on failure."""
    name = s.norm(name)
    if s.loaded(name):
        return
    for dep in s.DEPENDS.get(name, ()):
        load(dep)
    kver = s.kernel_release()
    path = s.module_file(name, kver)
    if path is None:
        s.die(f"modprobe: FATAL: Module {name} not found in directory /lib/modules/{kver}")
    info = s.modinfo(path)
    magic = info.get("vermagic", "").split(" ")[0]
    if magic != kver:
        s.kmsg(f"{name}: version magic '{info.get('vermagic', '')}' should be '{kver} SMP "
               "preempt mod_unload modversions '")
        s.die(f"modprobe: ERROR: could not insert '{name}': Exec format error")
    mtype = s.module_type_of(info)
    if s.has("secure-boot"):
        s.kmsg(f"Loading of unsigned module is rejected ({name})")
        s.die(f"modprobe: ERROR: could not insert '{name}': Key was rejected by service")
    adapter_failed = name == "nvidia" and requires_open(mtype)
    if name == "nvidia":
        s.kmsg("nvidia: loading out-of-tree module taints kernel.",
               s.proc_version_text(info.get("version", "?"), mtype).splitlines()[0])
    s.mark_loaded(name, info.get("version"), mtype)
    if adapter_failed:
        s.STATE.mkdir(parents=True, exist_ok=True)
        s.ADAPTER_FAILED.touch()
    if name == "nvidia" and s.has("module-in-use"):
        start_gpu_user()


def start_gpu_user() -> None:
    """A process with /dev/nvidia0 open (O_PATH: the node has no real device behind it)."""
    import os
    import time
    from pathlib import Path

    if s.holder_pid("cuda-app"):
        return
    dev = Path("/dev/nvidia0")
    if not dev.exists():
        os.mknod(dev, 0o666 | 0o020000, os.makedev(195, 0))
    if s.daemonize("cuda-app"):
        os.open(dev, os.O_PATH)
        s.refresh_refcnt("nvidia")
        while True:
            time.sleep(3600)
    for _ in range(200):
        if s.holder_pid("cuda-app"):
            break
        time.sleep(0.01)
    s.refresh_refcnt("nvidia")


def unload(name: str, *, cmd: str) -> None:
    name = s.norm(name)
    if not s.loaded(name):
        s.die(f"{cmd}: ERROR: Module {name} is not currently loaded")
    holders = sorted(p.name for p in (s.SYS_MODULE / name / "holders").iterdir())
    if holders:
        s.die(f"{cmd}: ERROR: Module {name} is in use by: {' '.join(holders)}")
    if s.refcnt(name):
        s.die(f"{cmd}: ERROR: Module {name} is in use")
    s.mark_unloaded(name)
    if name == "nvidia":
        s.ADAPTER_FAILED.unlink(missing_ok=True)
        s.kmsg("nvidia-nvlink: Unregistered Nvlink Core, major device number 238")


def modprobe(args: list[str]) -> None:
    remove = any(a in ("-r", "--remove") for a in args)
    quiet = any(a in ("-q", "--quiet") for a in args)
    many = remove or any(a in ("-a", "--all") for a in args)
    names = [a for a in args if not a.startswith("-")]
    if not many:
        names = names[:1]  # the rest are module parameters
    if not names:
        s.die("modprobe: ERROR: missing module name.")
    for name in names:
        if remove:
            if s.loaded(name):
                unload_with_deps(name)
            elif not quiet and s.module_file(name) is None and name != "nouveau":
                s.die(f"modprobe: FATAL: Module {s.norm(name)} not found.")
            continue
        if name == "nouveau" and blacklisted("nouveau") and "--ignore-install" not in args:
            continue
        load(name)


def unload_with_deps(name: str) -> None:
    unload(name, cmd="modprobe")
    for dep in s.DEPENDS.get(s.norm(name), ()):
        if s.loaded(dep) and not s.refcnt(dep):
            unload_with_deps(dep)


def blacklisted(name: str) -> bool:
    from pathlib import Path

    for conf in sorted(Path("/etc/modprobe.d").glob("*.conf")):
        words = [ln.split() for ln in conf.read_text().splitlines()]
        if any(w[:2] == ["blacklist", name] for w in words):
            return True
    return False


def rmmod(args: list[str]) -> None:
    names = [a for a in args if not a.startswith("-")]
    if not names:
        s.die("rmmod: ERROR: missing module name.")
    for name in names:
        unload(name, cmd="rmmod")


def lsmod(_args: list[str]) -> None:
    print("Module                  Size  Used by")
    for name in s.loaded_names():
        holders = sorted(p.name for p in (s.SYS_MODULE / name / "holders").iterdir())
        print(f"{name:<19} {65536:>8}  {s.refcnt(name)} {','.join(holders)}".rstrip())


def insmod(args: list[str]) -> None:
    s.die("insmod: ERROR: the simulated node loads modules with modprobe only", 1)


COMMANDS = {"modprobe": modprobe, "rmmod": rmmod, "lsmod": lsmod, "insmod": insmod}


def main(cmd: str) -> None:
    COMMANDS[cmd](sys.argv[1:])
