"""The kernel's own compiler: build the modules with the gcc that built the target kernel.

A kernel records its compiler in its build tree's `.config`
(`CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"`) and bakes flags
that compiler knows into every module build: a 6.x kernel built by gcc-12 with
`CONFIG_INIT_STACK_ALL_ZERO=y` passes `-ftrivial-auto-var-init=zero`, which gcc-11
rejects (`unrecognized command-line option`), the failure reported against the GPU
Operator on Ubuntu 22.04, whose default gcc is 11 while its HWE kernels are built by 12.

kbuild compiles with the kernel Makefile's own `CC = $(CROSS_COMPILE)gcc` (Debian's
headers pin `gcc-12` in `.kernelvariables`): a `CC` in the environment does not reach
it. nvidia-installer reads `CC` from the environment for its own checks (misc.c
`check_development_tools`), and NVIDIA's kernel Makefile respects a `CC` that is not
make's default; only a command-line `CC=` overrides kbuild's, and `MAKEFLAGS` carries
command-line variables into every make the installer starts. So the installer runs
with both `CC=gcc-N` and `MAKEFLAGS=CC=gcc-N` (checked against the real kbuild of
Debian's 6.1 headers: tests/simnode, scenario host-gcc-11).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.errors import HostCommandError, PreflightError
from agent.host.root import HostRoot
from agent.host.runner import HostRunner

log = structlog.get_logger(__name__)

BUILD_CONFIGS = ("/lib/modules/{release}/build/.config", "/usr/src/linux-headers-{release}/.config")
_CC_TEXT = re.compile(r'^CONFIG_CC_VERSION_TEXT="(.*)"\s*$', re.MULTILINE)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Compiler:
    """A compiler as its `--version` first line (or CONFIG_CC_VERSION_TEXT) names it."""

    text: str
    family: str  # gcc | clang | unknown
    version: str  # 12.2.0
    major: int

    @property
    def gcc_command(self) -> str:
        """The versioned command Debian and Ubuntu install with package gcc-N."""
        return f"gcc-{self.major}"


@dataclass(frozen=True)
class CompilerChoice:
    """The `CC` the installer must use (None: the host's default is the kernel's)."""

    cc: str | None
    changed: bool = False  # a compiler package was installed


def parse_compiler(text: str) -> Compiler | None:
    """`gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`, `x86_64-linux-gnu-gcc-12 (Ubuntu ...)
    12.3.0`, `cc (Debian 11.3.0-12) 11.3.0`, `Ubuntu clang version 14.0.0-1ubuntu1`."""
    text = text.strip()
    words = text.split()
    if not words:
        return None
    if "clang" in text:
        family = "clang"  # its version follows the word "version"
        token = words[words.index("version") + 1] if "version" in words[:-1] else ""
    else:
        family = "gcc" if ("gcc" in text or words[0] == "cc") else "unknown"
        token = words[-1]  # gcc puts its version last
    match = _VERSION.match(token) or _VERSION.search(text)
    if match is None:
        return None
    version = ".".join(g for g in match.groups() if g)
    return Compiler(text, family, version, int(match.group(1)))


def kernel_compiler(root: HostRoot, kernel_release: str) -> Compiler | None:
    """The compiler the kernel's build tree records, or None when it says nothing."""
    for candidate in BUILD_CONFIGS:
        text = root.read_text(candidate.format(release=kernel_release))
        if text is None:
            continue
        found = _CC_TEXT.search(text)
        if found:
            return parse_compiler(found.group(1))
    return None


def host_compiler(runner: HostRunner, command: str = "gcc") -> Compiler | None:
    """`<command> --version` on the host: what kbuild's `CC = $(CROSS_COMPILE)gcc` runs."""
    try:
        result = runner.run([command, "--version"], check=False, timeout=30)
    except HostCommandError:
        return None
    if not result.ok:
        return None
    first = (result.stdout.splitlines() or [""])[0]
    return parse_compiler(first)


def needed_cc(kernel: Compiler | None, host: Compiler | None) -> str | None:
    """The `gcc-N` to build with, or None when the host's default gcc is the kernel's."""
    if kernel is None or kernel.family != "gcc":
        return None  # no record, or a clang-built kernel: kbuild's own default decides
    if host is not None and host.family == "gcc" and host.major == kernel.major:
        return None
    return kernel.gcc_command


_GCC_NAME = re.compile(r"(?:^|-)gcc-(\d+)$")


def gcc_named(name: str) -> Compiler | None:
    """A gcc known by its file name (`x86_64-linux-gnu-gcc-11`, `gcc-12`); None without a
    major in it. The host's `gcc` is a link chain to such a name on Debian and Ubuntu."""
    found = _GCC_NAME.search(name)
    return Compiler(name, "gcc", found.group(1), int(found.group(1))) if found else None


@dataclass(frozen=True)
class CompilerOutlook:
    """What the build's compiler would be, from files alone (the dry run and `detect`)."""

    kernel_release: str
    kernel: Compiler | None  # CONFIG_CC_VERSION_TEXT of the build tree
    host_gcc: bool  # a `gcc` on the host's PATH
    host: Compiler | None  # that gcc as its links name it
    cc: str | None  # needed_cc(kernel, host): the gcc-N the installer would get as CC
    cc_present: bool  # that gcc-N is already installed

    @property
    def installs(self) -> bool:
        """Would the install apt-get a compiler package (gcc-N) first."""
        return self.cc is not None and not self.cc_present

    def describe(self) -> str:
        kernel = self.kernel
        if kernel is None:
            return (f"compiler: kernel {self.kernel_release} records none (no "
                    "CONFIG_CC_VERSION_TEXT): the host's gcc")
        built = f"kernel built by {kernel.text!r}"
        if kernel.family != "gcc":
            return f"compiler: {built}: kbuild's own default"
        if not self.host_gcc:
            return f"compiler: {built}; no gcc on the host: apt-get install gcc, then " \
                   f"{kernel.gcc_command} if its default differs"
        if self.host is None:
            return f"compiler: {built}; the host's gcc names no version (the install " \
                   f"asks `gcc --version`, and uses {kernel.gcc_command} if it differs)"
        if self.cc is None:
            return f"compiler: {built}; the host's gcc is {self.host.version}, the same"
        how = "present" if self.cc_present else f"apt-get install {self.cc}"
        return f"compiler: {built}; the host's gcc is {self.host.version}: CC={self.cc} ({how})"


def compiler_outlook(root: HostRoot, kernel_release: str) -> CompilerOutlook:
    """The kernel's compiler against the host's gcc, judged by needed_cc (files only)."""
    kernel = kernel_compiler(root, kernel_release)
    gcc = root.which("gcc")  # resolved through its links: the file kbuild's `gcc` runs
    host = gcc_named(gcc.name) if gcc is not None else None
    # Without a gcc to compare (none, or a name without its version), only the install's
    # `gcc --version` can tell whether the kernel's gcc-N is needed.
    cc = needed_cc(kernel, host) if host is not None else None
    return CompilerOutlook(kernel_release, kernel, gcc is not None, host, cc,
                           cc is not None and root.which(cc) is not None)


def installer_env(cc: str | None) -> dict[str, str]:
    """What the installer's environment needs so every compile uses `cc` (module docstring)."""
    return {"CC": cc, "MAKEFLAGS": f"CC={cc}"} if cc else {}


Install = Callable[[list[str]], None]  # apt-get install on the host; raises PreflightError


def ensure_kernel_compiler(root: HostRoot, runner: HostRunner, kernel_release: str, *,
                           install: Install) -> CompilerChoice:
    """Find (or install, as package gcc-N) the kernel's gcc when the host's default differs;
    PreflightError (exit 4) naming it when it cannot be had."""
    kernel = kernel_compiler(root, kernel_release)
    if kernel is None:
        log.info("kernel_compiler_unknown", kernel_release=kernel_release,
                 reason="no CONFIG_CC_VERSION_TEXT in the build tree's .config")
        return CompilerChoice(None)
    if kernel.family != "gcc":
        log.info("kernel_compiler_not_gcc", kernel=kernel.text, changed=False,
                 then="kbuild's own default compiler decides")
        return CompilerChoice(None)
    host = host_compiler(runner)
    cc = needed_cc(kernel, host)
    if cc is None:
        log.info("kernel_compiler_matches", kernel=kernel.text,
                 host=host.text if host else None, changed=False)
        return CompilerChoice(None)
    why = (f"kernel {kernel_release} was built by {kernel.text!r} and this host's gcc is "
           f"{host.version if host else 'missing'}")
    if root.which(cc) is not None:
        log.info("kernel_compiler_present", cc=cc, reason=why, changed=False)
        return CompilerChoice(cc)
    log.info("kernel_compiler_installing", package=cc, reason=why)
    try:
        install([cc])
    except PreflightError as exc:
        raise PreflightError(f"{why}; its compiler {cc} cannot be installed: {exc.message}",
                             remedy=f"install {cc} on the node (apt-get install {cc}), or fix "
                                    "its apt sources or network") from exc
    if root.which(cc) is None:
        raise PreflightError(f"{why}; apt-get installed {cc} but there is no {cc} command",
                             remedy=f"install {cc} on the node yourself")
    log.info("kernel_compiler_installed", cc=cc, changed=True)
    return CompilerChoice(cc, changed=True)
