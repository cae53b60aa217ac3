"""Build dependencies (kernel headers, gcc, make) through the host's apt-get, only when missing."""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import Callable

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.wait import wait_base, wait_exponential

from agent.errors import HostCommandError, PreflightError, last_lines
from agent.host.root import HostRoot
from agent.host.runner import CommandResult, HostRunner
from agent.install import compiler
from agent.install.preflight import headers_present

log = structlog.get_logger(__name__)

# What the .run needs to build its modules: headers, a compiler, make. The installer
# uses DKMS when the host has it (installer.py), so dkms is not forced on the host.
TOOLS = (("gcc", "gcc"), ("make", "make"))  # (command, package)
DPKG_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")
APT_ATTEMPTS = 3
APT_WAIT: wait_base = wait_exponential(multiplier=2, min=2, max=30)
APT_TIMEOUT = 900.0  # one apt-get run, on top of the lock wait
_LOCK_WORDS = ("Could not get lock", "Unable to acquire the dpkg frontend lock",
               "Unable to lock the administration directory", "is another process using it")
_OFFLINE_WORDS = ("Temporary failure resolving", "Could not resolve", "Failed to fetch",
                  "Network is unreachable", "Could not connect", "Connection timed out",
                  "Unable to connect", "No route to host", "Connection refused")
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86_64/arm64: 32 bytes
MISSING_REMEDY = "install {pkgs} on the node yourself, or fix its apt sources"


def missing_packages(root: HostRoot, kernel_release: str) -> list[str]:
    """Packages whose files the build needs and the host lacks (file checks, no process)."""
    missing = [] if headers_present(root, kernel_release) else [f"linux-headers-{kernel_release}"]
    missing += [pkg for cmd, pkg in TOOLS if root.which(cmd) is None]
    return missing


def dpkg_lock_holder(root: HostRoot) -> int | None:
    """PID holding a dpkg lock (-1: an OFD lock, 0: outside our PID namespace), else None."""
    for lock in DPKG_LOCKS:
        try:
            fd = os.open(root.path(lock), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            l_type, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
        except OSError:
            continue
        finally:
            os.close(fd)
        if l_type != fcntl.F_UNLCK:
            return int(pid)
    return None


def wait_for_dpkg_lock(root: HostRoot, timeout: float, *,
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.monotonic, poll: float = 1.0) -> float:
    """Wait (bounded) until no one holds the dpkg lock: apt < 1.9 ignores Lock::Timeout."""
    started = clock()
    holder = dpkg_lock_holder(root)
    if holder is None:
        return 0.0
    log.info("dpkg_lock_wait", holder_pid=holder, timeout=timeout)
    while holder is not None:
        waited = clock() - started
        if waited >= timeout:
            raise PreflightError(
                f"the host's dpkg lock is still held (pid {holder}) after {waited:.0f}s",
                remedy="let unattended-upgrades or the other apt run finish, or raise "
                       "GRID_AGENT_DPKG_LOCK_WAIT")
        sleep(poll)
        holder = dpkg_lock_holder(root)
    waited = clock() - started
    log.info("dpkg_lock_released", waited=round(waited, 1))
    return waited


class AptFailed(PreflightError):
    """apt-get failed; carries its output so retries and messages can classify it."""

    def __init__(self, message: str, output: str, *, remedy: str | None = None) -> None:
        super().__init__(message, remedy=remedy)
        self.output = output

    @property
    def lock(self) -> bool:
        return any(word in self.output for word in _LOCK_WORDS)

    @property
    def offline(self) -> bool:
        return any(word in self.output for word in _OFFLINE_WORDS)

    @property
    def transient(self) -> bool:
        return self.lock or self.offline


def apt_errors(output: str) -> str:
    """apt's own `E:` lines (the reason), else its last lines."""
    found = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("E:")]
    return " | ".join(found[-3:]) or last_lines(output, 3)


def _apt(runner: HostRunner, args: list[str], lock_wait: float, *, check: bool) -> CommandResult:
    argv = ["apt-get", "-q", "-y", "-o", f"DPkg::Lock::Timeout={int(lock_wait)}", *args]
    try:
        return runner.run(argv, timeout=APT_TIMEOUT + lock_wait, check=check,
                          env={"DEBIAN_FRONTEND": "noninteractive"})
    except HostCommandError as exc:
        output = f"{exc.stdout}\n{exc.stderr}"
        raise AptFailed(f"`{' '.join(argv)}` failed: {apt_errors(output)}", output) from exc


def _update_and_install(runner: HostRunner, packages: list[str], lock_wait: float) -> None:
    # Package lists may predate the kernel: update first. `apt-get update` often exits 0
    # when the mirror is unreachable, so its output joins the install's for classifying.
    update = _apt(runner, ["update"], lock_wait, check=False)
    try:
        _apt(runner, ["install", "--no-install-recommends", *packages], lock_wait, check=True)
    except AptFailed as exc:
        exc.output = f"{update.stdout}\n{update.stderr}\n{exc.output}"
        raise


class _Stop:
    """Lock trouble retries until the lock wait is spent; other transient failures a few times."""

    def __init__(self, lock_wait: float, attempts: int) -> None:
        self.deadline = time.monotonic() + lock_wait
        self.attempts = attempts

    def __call__(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AptFailed) and exc.lock and not exc.offline:
            return time.monotonic() >= self.deadline
        return bool(state.attempt_number >= self.attempts)


def _final_error(exc: AptFailed, packages: list[str], kernel_release: str) -> PreflightError:
    pkgs = " ".join(packages)
    why = apt_errors(exc.output)
    if exc.offline:
        return PreflightError(
            f"cannot install {pkgs}: apt-get cannot reach the package mirror "
            f"(network, mirror or proxy): {why}",
            remedy="check the node's network route to its apt mirror and any proxy "
                   f"(Acquire::http::Proxy), or preinstall linux-headers-{kernel_release}")
    if exc.lock:
        return PreflightError(f"cannot install {pkgs}: the dpkg lock stayed held: {why}",
                              remedy="let the other apt/dpkg run finish, or raise "
                                     "GRID_AGENT_DPKG_LOCK_WAIT")
    return PreflightError(f"cannot install {pkgs}: {why}",
                          remedy=MISSING_REMEDY.format(pkgs=pkgs))


def apt_install(root: HostRoot, runner: HostRunner, packages: list[str], kernel_release: str, *,
                lock_wait: float, retry_wait: wait_base = APT_WAIT,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """`apt-get update` + `install` on the host, retried through lock and mirror trouble;
    PreflightError (exit 4) naming the packages when they cannot be had."""
    stop = _Stop(lock_wait, APT_ATTEMPTS)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, AptFailed):  # only AptFailed is retried (transient)
            return
        log.warning("apt_retry", attempt=state.attempt_number, reason=apt_errors(exc.output),
                    lock=exc.lock, offline=exc.offline)
        if exc.lock:  # apt < 1.9 ignores DPkg::Lock::Timeout and fails at once: wait here
            wait_for_dpkg_lock(root, max(0.0, stop.deadline - time.monotonic()), sleep=sleep)

    retrying = Retrying(stop=stop, wait=retry_wait, sleep=sleep, before_sleep=before_sleep,
                        retry=retry_if_exception(lambda e: getattr(e, "transient", False)),
                        reraise=True)
    try:
        retrying(_update_and_install, runner, packages, lock_wait)
    except AptFailed as exc:
        raise _final_error(exc, packages, kernel_release) from exc


def ensure_build_deps(root: HostRoot, runner: HostRunner, kernel_release: str, *,
                      lock_wait: float, retry_wait: wait_base = APT_WAIT,
                      sleep: Callable[[float], None] = time.sleep) -> bool:
    """Install what the build lacks; raise PreflightError (exit 4) when it cannot."""
    packages = missing_packages(root, kernel_release)
    if not packages:
        log.info("build_deps_present", kernel_release=kernel_release, changed=False)
        return False
    log.info("build_deps_installing", packages=packages)
    apt_install(root, runner, packages, kernel_release, lock_wait=lock_wait,
                retry_wait=retry_wait, sleep=sleep)
    still = missing_packages(root, kernel_release)
    if still:
        raise PreflightError(f"apt-get succeeded but {' '.join(still)} is still missing",
                             remedy=MISSING_REMEDY.format(pkgs=" ".join(still)))
    log.info("build_deps_installed", packages=packages, changed=True)
    return True


def ensure_compiler(root: HostRoot, runner: HostRunner, kernel_release: str, *,
                    lock_wait: float) -> compiler.CompilerChoice:
    """The kernel's own gcc (compiler.py), installed through apt-get when missing."""
    return compiler.ensure_kernel_compiler(
        root, runner, kernel_release,
        install=lambda pkgs: apt_install(root, runner, pkgs, kernel_release,
                                         lock_wait=lock_wait))
