"""The dkms stub's tree layout, command line and dkms.conf (see dkmssim.py).

After DKMS 3.x's dkms.in: paths and state tests (is_module_added/built/installed),
read_conf (the file is sourced by bash, DKMS's defaults applied), the CC DKMS exports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

DKMS_TREE = Path("/var/lib/dkms")
SOURCE_TREE = Path("/usr/src")
INSTALL_TREE = Path("/lib/modules")
ARCH = os.uname().machine
DEST = "/updates/dkms"  # override_dest_module_location() for debian* and ubuntu*
ACTIONS = ("add", "build", "install", "uninstall", "unbuild", "remove", "status",
           "autoinstall")
# dkms.conf is shell: bash sources it with DKMS's variables set and prints what it read.
READ_CONF = r"""
kernelver=$1 arch=$2 kernel_source_dir=$3 dkms_tree=$4 source_tree=$5 install_tree=$6
. "$7" || exit 1
for n in PACKAGE_NAME PACKAGE_VERSION AUTOINSTALL; do printf '%s=%s\0' "$n" "${!n}"; done
for n in MAKE BUILT_MODULE_NAME BUILT_MODULE_LOCATION DEST_MODULE_NAME \
         DEST_MODULE_LOCATION; do
  declare -n a=$n
  for i in "${!a[@]}"; do printf '%s[%s]=%s\0' "$n" "$i" "${a[$i]}"; done
  unset -n a
done
"""


class Die(Exception):
    """dkms's die(): `Error! <lines>` on stderr and that exit code."""

    def __init__(self, code: int, *lines: str):
        super().__init__(lines[0] if lines else "")
        self.code, self.lines = code, lines


@dataclass
class Args:
    action: str = ""
    module: str = ""
    version: str = ""
    kernels: list[str] = field(default_factory=list)
    all: bool = False
    force: bool = False


@dataclass
class Conf:
    """What dkms.conf says, after DKMS's defaults (read_conf)."""

    name: str
    version: str
    make: str
    autoinstall: bool
    modules: list[tuple[str, str, str, str]]  # built name, built location, dest name, dest


VALUED = ("-m", "-v", "-k", "--kernelver", "--module", "--version", "-a", "--arch")


def parse(argv: list[str]) -> Args:
    args, i = Args(), 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in VALUED:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            _option(args, key, value)
        elif arg in ("--all", "--force", "-q", "--quiet", "--verbose"):
            args.all = args.all or arg == "--all"
            args.force = args.force or arg == "--force"
        elif arg.startswith("-"):
            raise Die(2, f"Unknown option: {arg}")
        elif not args.action:
            if arg not in ACTIONS:
                raise Die(4, f"Unknown action: {arg}")
            args.action = arg
        else:
            _module_arg(args, arg)
        i += 1
    return args


def _option(args: Args, key: str, value: str) -> None:
    if key in ("-m", "--module"):
        _module_arg(args, value)
    elif key in ("-v", "--version"):
        args.version = value
    elif key in ("-k", "--kernelver"):
        args.kernels.append(value.split("/")[0])  # -k <kernel>/<arch>


def _module_arg(args: Args, value: str) -> None:
    module, slash, version = value.partition("/")
    args.module = module
    if slash:
        args.version = version


def need_module(args: Args, action: str) -> None:
    if not (args.module and args.version):
        raise Die(1, "Arguments <module> and <module-version> are not specified.",
                  f"Usage: {action} <module>/<module-version> or",
                  f"       {action} -m <module>/<module-version> or",
                  f"       {action} -m <module> -v <module-version>")


def tree(m: str, v: str) -> Path:
    return DKMS_TREE / m / v


def kernel_source_dir(kernel: str) -> Path:
    return INSTALL_TREE / kernel / "build"


def is_added(m: str, v: str) -> bool:
    source = tree(m, v) / "source"
    return source.is_symlink() and source.is_dir()


def is_built(m: str, v: str, k: str) -> bool:
    return (tree(m, v) / k / ARCH / "module").is_dir()


def active_link(m: str, k: str) -> Path:
    return DKMS_TREE / m / f"kernel-{k}-{ARCH}"


def is_installed(m: str, v: str, k: str) -> bool:
    link = active_link(m, k)
    return is_built(m, v, k) and link.is_symlink() and \
        link.resolve() == (tree(m, v) / k / ARCH).resolve()


def read_conf(m: str, v: str, k: str, path: Path | None = None) -> Conf:
    path = path or tree(m, v) / "source" / "dkms.conf"
    if not path.is_file():
        raise Die(4, "Could not locate dkms.conf file.", f"File: {path} does not exist.")
    done = subprocess.run(
        ["bash", "-c", READ_CONF, "dkms", k, ARCH, str(kernel_source_dir(k)), str(DKMS_TREE),
         str(SOURCE_TREE), str(INSTALL_TREE), str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise Die(8, "Bad conf file.", f"File: {path} does not represent a valid dkms.conf "
                  "file.", done.stderr.strip())
    values = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
    return _conf(values, m, v, path)


def _conf(values: dict[str, str], m: str, v: str, path: Path) -> Conf:
    def arr(name: str, i: int) -> str:
        return values.get(f"{name}[{i}]", "")

    count = 1 + max([int(key.split("[")[1].rstrip("]")) for key in values
                     if key.startswith(("BUILT_MODULE", "DEST_MODULE"))] or [-1])
    modules = []
    for i in range(count):
        built = arr("BUILT_MODULE_NAME", i) or (values["PACKAGE_NAME"] if count == 1 else "")
        where = arr("BUILT_MODULE_LOCATION", i)
        if where and not where.endswith("/"):
            where += "/"
        if not built or not arr("DEST_MODULE_LOCATION", i).startswith(
                ("/kernel", "/updates", "/extra")):
            raise Die(8, "Bad conf file.", f"File: {path} does not represent a valid "
                      f"dkms.conf file (record #{i}).")
        modules.append((built, where, arr("DEST_MODULE_NAME", i) or built, DEST))
    if not values.get("PACKAGE_NAME") or not values.get("PACKAGE_VERSION"):
        raise Die(8, "Bad conf file.", f"File: {path} has no PACKAGE_NAME or PACKAGE_VERSION.")
    # read_conf's default make command; run_make puts the kernel's headers in.
    make = values.get("MAKE[0]") or f"make -C ${{kernel_source_dir}} M={tree(m, v)}/build"
    return Conf(values["PACKAGE_NAME"], values["PACKAGE_VERSION"], make,
                values.get("AUTOINSTALL", "").lower().startswith("y"), modules)


def kernel_cc(source_dir: Path) -> str | None:
    """The CC DKMS exports (do_build): `.kernelvariables`' CC through make, then the first
    word of CONFIG_CC_VERSION_TEXT when that command exists."""
    cc = None
    if (source_dir / ".kernelvariables").exists():
        script = f"show-%:\n\t@echo $($*)\ninclude {source_dir}/.kernelvariables\n"
        done = subprocess.run(["make", "-f", "-", "show-CC"], input=script,
                              capture_output=True, text=True)
        cc = done.stdout.strip() or None
    config = source_dir / "include/config/auto.conf"
    config = config if config.exists() else source_dir / ".config"
    try:
        text = config.read_text()
    except OSError:
        return cc
    for line in text.splitlines():
        if line.startswith("CONFIG_CC_VERSION_TEXT="):
            word = line.split("=", 1)[1].strip('"').split(" ")[0]
            if shutil.which(word):
                cc = word
    return cc
