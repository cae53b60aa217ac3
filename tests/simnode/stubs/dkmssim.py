"""`dkms` of the simulated node (scenario `dkms`: the dkms package is installed); its tree
layout, command line and dkms.conf reading are in dkmsconf.py.

Written after DKMS 3.x's own `dkms.in` (dell/dkms), Debian/Ubuntu flavour: its tree
(/var/lib/dkms/<m>/<v>/{source,build,<kernel>/<arch>/module,log}, the active link
<m>/kernel-<kernel>-<arch>), its messages and exit codes, its install location
(`/updates/dkms` on debian and ubuntu, whatever DEST_MODULE_LOCATION says), `status`
lines. The build is REAL: dkms.conf is sourced by bash, the source is copied to the build
directory and its make command (default `make -C <kernel_source_dir> M=<build>`, with
`-jN KERNELRELEASE=<kernel>` put after a leading `make`, as DKMS does) runs kbuild
against /lib/modules/<kernel>/build; CC is taken from the headers' `.kernelvariables` and
CONFIG_CC_VERSION_TEXT as DKMS takes it (exported: a plain kbuild's own CC assignment
overrides it), and a `CC=` in MAKEFLAGS (how the agent passes the kernel's compiler)
overrides both inside make. Not modelled: module signing (the sim kernel loads nothing),
compression (Debian's 6.1 has CONFIG_MODULE_COMPRESS_NONE), PATCH/PRE_/POST_ scripts,
weak modules, BUILD_DEPENDS, mktarball and friends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import simlib as s
from dkmsconf import (
    ARCH,
    DKMS_TREE,
    INSTALL_TREE,
    SOURCE_TREE,
    Args,
    Conf,
    Die,
    active_link,
    is_added,
    is_built,
    is_installed,
    kernel_cc,
    kernel_source_dir,
    need_module,
    parse,
    read_conf,
    tree,
)

RUNS = Path("/var/lib/grid-sim/dkms-runs.jsonl")

# -- actions -----------------------------------------------------------------------------------


def add(m: str, v: str, k: str) -> None:
    if is_added(m, v):
        raise Die(3, f"DKMS tree already contains: {m}/{v}",
                  "You cannot add the same module/version combo more than once.")
    src = SOURCE_TREE / f"{m}-{v}"
    if not src.is_dir():
        raise Die(2, "Could not find module source directory.",
                  f"Directory: {src} does not exist.")
    read_conf(m, v, k, src / "dkms.conf")
    print(f"Creating symlink {tree(m, v)}/source -> {src}")
    (tree(m, v) / "build").mkdir(parents=True, exist_ok=True)
    (tree(m, v) / "source").symlink_to(src)


def build(m: str, v: str, k: str) -> None:
    if not is_added(m, v):
        add(m, v, k)
        print("")
    base = tree(m, v) / k / ARCH
    if base.is_dir():
        raise Die(3, f"This module/version has already been built on: {k}",
                  f"Directory {base} already exists. Use the dkms remove function before "
                  "trying to build again.")
    conf = read_conf(m, v, k)
    source_dir = kernel_source_dir(k)
    if not (source_dir / "include").exists():  # prepare_kernel() / _check_kernel_dir()
        raise Die(21, f"Your kernel headers for kernel {k} cannot be found at "
                  f"{INSTALL_TREE}/{k}/build or {INSTALL_TREE}/{k}/source.",
                  f"Please install the linux-headers-{k} package or use the "
                  "--kernelsourcedir option to tell DKMS where it's located.")
    build_dir = tree(m, v) / "build"
    shutil.rmtree(build_dir, ignore_errors=True)
    shutil.copytree(tree(m, v) / "source", build_dir, symlinks=True)
    log = build_dir / "make.log"
    run_make(conf, k, source_dir, build_dir, log)
    for built, where, _, _ in conf.modules:
        if not (build_dir / f"{where}{built}.ko").is_file():
            raise Die(7, f"Build of {where}{built}.ko failed for: {k} ({ARCH})",
                      "Make sure the name and location of the generated module are correct,",
                      f"or consult {log} for more information.")
    store(conf, base, build_dir, log)


def run_make(conf: Conf, k: str, source_dir: Path, build_dir: Path, log: Path) -> None:
    cmd = conf.make.replace("${kernel_source_dir}", str(source_dir))
    if cmd.startswith("make"):  # ${make_command/#make/make -j$parallel_jobs KERNELRELEASE=..}
        cmd = f"make -j{os.cpu_count() or 1} KERNELRELEASE={k}" + cmd[len("make"):]
    env = dict(os.environ)
    cc = kernel_cc(source_dir)
    if cc:
        env["CC"] = env["KERNEL_CC"] = cc
    else:
        env.pop("CC", None)
    with log.open("a") as out:
        out.write(f"DKMS (grid-sim) make.log for {conf.name}/{conf.version} for kernel {k} "
                  f"({ARCH})\n\nBuilding module(s)\n# command: {cmd}\n")
        out.flush()
        sys.stdout.write("Building module(s)...")
        sys.stdout.flush()
        code = subprocess.run(["bash", "-c", cmd], cwd=build_dir, env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        out.write(f"\n# exit code: {code}\n")
    print(" done." if code == 0 else "(bad exit status: 2)")
    if code != 0:
        raise Die(10, f"Bad return status for module build on kernel: {k} ({ARCH})",
                  f"Consult {log} for more information.")


def store(conf: Conf, base: Path, build_dir: Path, log: Path) -> None:
    """Keep the built modules under <kernel>/<arch>/module (a temp dir, then renamed)."""
    tmp = base.parent / f".tmp_{ARCH}_grid-sim"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "module").mkdir(parents=True)
    (tmp / "log").mkdir()
    if (build_dir / "Module.symvers").exists():
        shutil.copy2(build_dir / "Module.symvers", tmp / "module/Module.symvers")
    for built, where, dest_name, _ in conf.modules:
        ko = build_dir / f"{where}{built}.ko"
        if shutil.which("strip"):  # STRIP defaults to yes: `strip -g`
            subprocess.run(["strip", "-g", str(ko)], check=False)
        shutil.copy2(ko, tmp / "module" / f"{dest_name}.ko")
    tmp.chmod(0o755)
    tmp.rename(base)
    shutil.move(str(log), str(base / "log/make.log"))
    shutil.rmtree(build_dir, ignore_errors=True)


def install(m: str, v: str, k: str) -> None:
    if not is_built(m, v, k):
        build(m, v, k)
    lib_tree = INSTALL_TREE / k
    if not lib_tree.exists():
        raise Die(6, f"The directory {lib_tree} doesn't exist.",
                  "You cannot install a module onto a non-existant kernel.")
    conf = read_conf(m, v, k)
    base = tree(m, v) / k / ARCH
    if is_installed(m, v, k):
        raise Die(5, f"This module/version combo is already installed for kernel {k} "
                  f"({ARCH}).")
    for _, _, dest_name, dest in conf.modules:
        archive_original(m, k, dest_name, dest)
        target = lib_tree / dest.lstrip("/") / f"{dest_name}.ko"
        print(f"Installing {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / "module" / f"{dest_name}.ko", target)
    link = active_link(m, k)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"{v}/{k}/{ARCH}")
    depmod(k)


def archive_original(m: str, k: str, name: str, dest: str) -> None:
    """A module of that name already in the kernel's tree is kept for `uninstall` (the
    active link absent: the first DKMS install for this kernel)."""
    if active_link(m, k).is_symlink():
        return
    lib_tree = INSTALL_TREE / k
    found = sorted(lib_tree.rglob(f"{name}.ko"))
    prefs = [lib_tree / "extra" / f"{name}.ko", lib_tree / "updates" / f"{name}.ko",
             lib_tree / dest.lstrip("/") / f"{name}.ko", *(found[:1] if len(found) == 1 else [])]
    for original in prefs:
        if original.is_file():
            keep = DKMS_TREE / m / "original_module" / k / ARCH
            keep.mkdir(parents=True, exist_ok=True)
            print(f"Found pre-existing {original}, archiving for uninstallation")
            shutil.move(str(original), str(keep / original.name))
            (keep / f"{original.name}.origin").write_text(f"{original}\n")
            return


def depmod(k: str) -> None:
    sys.stdout.write("Running depmod...")
    done = subprocess.run(["depmod", "-a", k], capture_output=True, text=True)
    print(" done." if done.returncode == 0 else "(bad exit status)")
    if done.returncode != 0:
        raise Die(6, "Problems with depmod detected.", done.stderr.strip())


def uninstall(m: str, v: str, k: str) -> None:
    if not is_installed(m, v, k):
        print(f"Module {m}/{v} is not installed for kernel {k} ({ARCH}). Skipping...")
        return
    conf = read_conf(m, v, k)
    print(f"Module {m}/{v} for kernel {k} ({ARCH}):")
    print("Before uninstall, this module version was ACTIVE on this kernel.")
    for _, _, dest_name, dest in conf.modules:
        target = INSTALL_TREE / k / dest.lstrip("/") / f"{dest_name}.ko"
        print(f"Deleting {target}")
        target.unlink(missing_ok=True)
    for folder in (INSTALL_TREE / k / "updates/dkms", INSTALL_TREE / k / "updates"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    restore_originals(m, k)
    active_link(m, k).unlink()
    depmod(k)


def restore_originals(m: str, k: str) -> None:
    keep = DKMS_TREE / m / "original_module" / k / ARCH
    for origin in sorted(keep.glob("*.origin")) if keep.is_dir() else ():
        original = Path(origin.read_text().strip())
        saved = keep / origin.name[:-len(".origin")]
        if saved.is_file():
            print(f"Restoring archived original module {original}")
            original.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(saved), str(original))
    shutil.rmtree(DKMS_TREE / m / "original_module" / k, ignore_errors=True)


def unbuild(m: str, v: str, k: str) -> None:
    if not is_built(m, v, k):
        print(f"Module {m}/{v} is not built for kernel {k} ({ARCH}). Skipping...")
        return
    shutil.rmtree(tree(m, v) / k / ARCH)
    if not any((tree(m, v) / k).iterdir()):
        (tree(m, v) / k).rmdir()


def built_kernels(m: str, v: str) -> list[str]:
    skip = {"source", "build", "log"}
    return sorted(p.name for p in tree(m, v).iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name not in skip
                  and (p / ARCH).is_dir()) if tree(m, v).is_dir() else []


def remove(m: str, v: str, kernels: list[str]) -> None:
    if not is_added(m, v):
        raise Die(3, f"The module/version combo: {m}/{v} is not located in the DKMS tree.")
    for k in kernels:
        uninstall(m, v, k)
        unbuild(m, v, k)
        print("")
    if not built_kernels(m, v):
        print(f"Deleting module {m}/{v} completely from the DKMS tree.")
        shutil.rmtree(tree(m, v))
    if (DKMS_TREE / m).is_dir() and not any((DKMS_TREE / m).iterdir()):
        (DKMS_TREE / m).rmdir()


def combos(m: str = "", v: str = "") -> list[tuple[str, str]]:
    """Every module/version DKMS knows (list_module_version_combos: no kernel-* links)."""
    found = []
    for mod in sorted(DKMS_TREE.iterdir()) if DKMS_TREE.is_dir() else ():
        if m and mod.name != m:
            continue
        for ver in sorted(mod.iterdir()):
            if ver.is_symlink() or not ver.is_dir() or ver.name == "original_module":
                continue
            if not v or ver.name == v:
                found.append((mod.name, ver.name))
    return found


def status(m: str, v: str, kernels: list[str]) -> None:
    for mod, ver in combos(m, v):
        source = tree(mod, ver) / "source"
        if (source.is_symlink() and not source.is_dir()) or not source.is_symlink():
            print(f"{mod}/{ver}: broken")
            continue
        lines = [f"{mod}/{ver}, {k}, {ARCH}: "
                 f"{'installed' if is_installed(mod, ver, k) else 'built'}"
                 for k in built_kernels(mod, ver) if not kernels or k in kernels]
        print("\n".join(lines) if lines else f"{mod}/{ver}: added")


def autoinstall(kernels: list[str]) -> None:
    """The kernel postinst hook's call: every AUTOINSTALL module not installed there yet."""
    failed = []
    for k in kernels:
        for mod, ver in combos():
            if not is_added(mod, ver) or is_installed(mod, ver, k) or \
                    not read_conf(mod, ver, k).autoinstall:
                continue
            try:
                install(mod, ver, k)
            except Die as exc:
                report(exc)
                failed.append(f"{mod}/{ver}")
    if failed:
        raise Die(11, "One or more modules failed to install during autoinstall.",
                  f"Refer to previous errors for more information. ({' '.join(failed)})")


def report(exc: Die) -> None:
    sys.stderr.write("\nError! " + "\n".join(exc.lines) + "\n")


def dispatch(args: Args) -> None:
    kernels = args.kernels or ([] if args.all else [s.kernel_release()])
    if args.action == "status":
        status(args.module, args.version, args.kernels)
        return
    if args.action == "autoinstall":
        autoinstall(kernels)
        return
    need_module(args, args.action)
    m, v = args.module, args.version
    if args.action == "remove":
        remove(m, v, built_kernels(m, v) if args.all else kernels)
        return
    if args.all:
        raise Die(5, f"The action {args.action} does not support the --all parameter.")
    if len(kernels) != 1:
        raise Die(4, f"The action {args.action} does not support multiple kernel version "
                  "parameters on the command line.")
    step = {"add": add, "build": build, "install": install, "uninstall": uninstall,
            "unbuild": unbuild}[args.action]
    step(m, v, kernels[0])


def main(cmd: str) -> None:
    code = 0
    try:
        args = parse(sys.argv[1:])
        if not args.action:
            raise Die(4, "No action was specified.")
        dispatch(args)
    except Die as exc:
        report(exc)
        code = exc.code
    record_run(code)
    sys.exit(code)


def record_run(code: int) -> None:
    """Each call and its exit code, one JSON line (the rig's, not DKMS's: tests tell whose
    `dkms remove` did the work)."""
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    with RUNS.open("a") as out:
        out.write(json.dumps({"argv": sys.argv[1:], "exit": code}) + "\n")
