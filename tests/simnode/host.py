"""SimNode: a simulated RTX node made of a real mount + PID namespace (issue 3).

One process per node: `unshare --mount --pid --fork --kill-child --propagation private`
runs hostinit.sh, which assembles a root (copy-on-write /usr and /etc over the machine's,
a fresh "disk" for /var, /usr/local, /lib/modules, /usr/src, tmpfs /run made rshared,
tmpfs over /sys/module and /proc/driver), pivot_roots into it and waits as PID 1.
SIGKILL to that PID 1 ends the PID namespace, and with its last process the mount
namespace and every mount in it: nothing is left on the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.host.root import HostRoot
from agent.host.runner import HOST_PATH, NSENTER_FLAGS

HERE = Path(__file__).resolve().parent
INIT = HERE / "hostinit.sh"
STUBS = HERE / "stubs"
SIM_LIB = "/usr/local/lib/grid-sim"
SCENARIO_FILE = "/etc/grid-sim/scenarios"
SCENARIOS = (
    "healthy", "unlicensed", "wrong-profile", "mig-disabled", "requires-open", "secure-boot",
    "requires-open-loads", "recommend-unavailable", "host-gcc-11", "foreign-cuda-driver",
    "proprietary-gpu", "dkms",
    "nouveau-loaded", "headers-missing", "apt-offline", "dpkg-locked", "module-in-use",
    "smi-exit-14", "installer-error", "old-driver-loaded", "no-gridd-unit",
    "installer-slow",
)
# Stubs that shadow the host's own tools (PATH puts /usr/local/sbin first).
SBIN_STUBS = ("modprobe", "rmmod", "lsmod", "insmod", "dmesg",
              "update-initramfs", "mokutil", "systemctl")
BIN_STUBS = ("uname", "apt-get", "dpkg", "dpkg-query")
OS_RELEASE = """\
PRETTY_NAME="Ubuntu 22.04.5 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.5 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=jammy
"""
READY_TIMEOUT = 15.0
HOSTNAME = "rtx-sim"


def machine_kernel_releases() -> list[str]:
    """Kernel releases whose Debian headers are installed on this machine."""
    prefix = "linux-headers-"
    found = [p.name[len(prefix):] for p in Path("/usr/src").glob(f"{prefix}*-amd64")
             if (p / "Makefile").exists()]
    return sorted(found, key=lambda r: [int(x) if x.isdigit() else x
                                        for x in re.split(r"(\d+)", r)])


def default_kernel_release() -> str | None:
    """The node's `uname -r`: the newest generic `-amd64` flavour (others are second kernels)."""
    releases = machine_kernel_releases()
    generic = [r for r in releases if re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", r)]
    return (generic or releases or [None])[-1]


def second_kernel_release(running: str) -> str | None:
    """Another release with real Debian headers here (Debian's cloud flavour of the same
    ABI: `apt-get install linux-headers-cloud-amd64`), for kernel-update scenarios."""
    others = [r for r in machine_kernel_releases() if r != running]
    return others[-1] if others else None


class SimNodeError(RuntimeError):
    """The simulated node could not be started or driven."""


class SimNode:
    """A simulated host the agent targets with `--host-pid PID --host-root /proc/PID/root`."""

    def __init__(self, kernel_release: str | None = None, scenarios: Iterable[str] = (),
                 stage_dir: Path | None = None, die_with_parent: bool = True) -> None:
        if kernel_release is None:
            kernel_release = default_kernel_release()
            if kernel_release is None:
                raise SimNodeError("no /usr/src/linux-headers-*-amd64 here: apt install "
                                   "linux-headers-amd64")
        self.kernel_release = kernel_release
        self._initial = tuple(scenarios)
        self._stage_dir = stage_dir
        self._die_with_parent = die_with_parent
        self._stage: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.root = HostRoot(Path("/nonexistent"))

    @classmethod
    def attach(cls, pid: int, kernel_release: str) -> SimNode:
        """A handle on a node started by another process (scripts/simnode)."""
        node = cls(kernel_release)
        node.pid = pid
        node.root = HostRoot(Path(f"/proc/{pid}/root"))
        return node

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> SimNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SimNode:
        """Start the namespace host and provision its stubs; returns self."""
        if self._stage_dir is None:
            self._stage = Path(tempfile.mkdtemp(prefix="grid-sim-"))
        else:
            self._stage = self._stage_dir
            self._stage.mkdir(parents=True, exist_ok=True)
        argv = ["unshare", "--mount", "--pid", "--uts", "--fork", "--kill-child",
                "--propagation", "private", "--", "/bin/sh", str(INIT), str(self._stage),
                HOSTNAME]
        if self._die_with_parent:
            # A killed pytest takes its nodes along: unshare gets SIGKILL, --kill-child the rest.
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        # A file, not a pipe, for stderr: a node started by scripts/simnode outlives us.
        self._err = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the node)
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._err, start_new_session=True)
        try:
            self._wait_ready()
            if self._stage_dir is None:
                # The node pivoted away from it: nothing is left on disk even after a SIGKILL.
                self._stage.rmdir()
                self._stage = None
            self.pid = self._inner_pid()
            self.root = HostRoot(Path(f"/proc/{self.pid}/root"))
            self._provision()
            if self._initial:
                self.set_scenarios(*self._initial)
        except BaseException:
            self.stop()
            raise
        return self

    def detach(self) -> None:
        """Leave the node running after this process exits (scripts/simnode up)."""
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None
        self._stage = None

    @property
    def unshare_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _wait_ready(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], READY_TIMEOUT)
        line = self._proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self._proc.kill()
            self._proc.wait()
            self._err.seek(0)
            err = self._err.read()
            raise SimNodeError(f"simulated host did not come up: {err.decode(errors='replace')}")
        self._proc.stdout.close()

    def _inner_pid(self) -> int:
        assert self._proc is not None
        upid = self._proc.pid
        children = Path(f"/proc/{upid}/task/{upid}/children").read_text().split()
        if len(children) != 1:
            raise SimNodeError(f"unshare {upid} has children {children}, want one")
        return int(children[0])

    def stop(self) -> None:
        """SIGKILL the host's PID 1 (its whole PID namespace) and reap unshare."""
        if self.pid:
            _kill(self.pid)  # unshare then exits by itself: PID 1 was its only child
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill(self._proc.pid)
                self._proc.wait(timeout=5)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._err.close()
            self._proc = None
        if self.pid:
            _wait_gone(self.pid)
            self.pid = 0
        if self._stage is not None:
            if self._stage_dir is None:
                shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None

    @property
    def running(self) -> bool:
        return bool(self.pid) and Path(f"/proc/{self.pid}").exists()

    # -- what tests and the agent use -----------------------------------------------------

    def agent_args(self) -> list[str]:
        return ["--host-pid", str(self.pid), "--host-root", f"/proc/{self.pid}/root"]

    def path(self, host_path: str) -> Path:
        """Where this machine sees a host path (through /proc/PID/root)."""
        return self.root.path(host_path)

    def exec(self, argv: Sequence[str], check: bool = True, timeout: float = 120,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv in the host's namespaces through real nsenter."""
        full = ["nsenter", "--target", str(self.pid), *NSENTER_FLAGS, "--", *argv]
        env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
        return subprocess.run(full, check=check, capture_output=True, text=True, env=env,
                              timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def set_scenarios(self, *names: str) -> None:
        """Write the scenario file the stubs read, then put the host in that state."""
        unknown = sorted(set(names) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
        self._write(SCENARIO_FILE, "".join(f"{n}\n" for n in names))
        self.exec([f"{SIM_LIB}/simctl", "apply"])

    def scenarios(self) -> tuple[str, ...]:
        text = self.path(SCENARIO_FILE).read_text()
        return tuple(line.strip() for line in text.splitlines() if line.strip())

    def reboot(self, autoload: bool = True, kernel_release: str | None = None) -> None:
        """Simulated reboot: /run and module state emptied, the disk kept; `kernel_release`
        boots into another installed kernel (see install_kernel)."""
        argv = [f"{SIM_LIB}/simctl", "reboot", "--autoload" if autoload else "--no-autoload"]
        if kernel_release is not None:
            argv.append(f"--kernel={kernel_release}")
        self.exec(argv)
        if kernel_release is not None:
            self.kernel_release = kernel_release

    def install_kernel(self, release: str, *, headers: bool = True) -> None:
        """A kernel update: /boot/vmlinuz-<release>, its module tree, its headers (unless
        not `headers`), and Ubuntu's /run/reboot-required{,.pkgs}."""
        argv = [f"{SIM_LIB}/simctl", "install-kernel", release]
        done = self.exec(argv if headers else [*argv, "--no-headers"], check=False)
        if done.returncode != 0:
            raise SimNodeError(f"install-kernel {release} failed: {done.stderr.strip()}")

    def mountinfo(self) -> str:
        """The host's mount table, as its own PID 1 sees it."""
        return self.path("/proc/1/mountinfo").read_text()

    # -- provisioning ----------------------------------------------------------------------

    def _write(self, host_path: str, text: str, mode: int = 0o644) -> None:
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(text)
        target.chmod(mode)

    def _provision(self) -> None:
        self._write("/etc/os-release", OS_RELEASE)
        self._write("/etc/grid-sim/kernel_release", self.kernel_release + "\n")
        self._write(SCENARIO_FILE, "healthy\n")
        self._write("/etc/hostname", f"{HOSTNAME}\n")
        for src in sorted(STUBS.iterdir()):
            if src.name.startswith(".") or src.name == "__pycache__":
                continue
            self._write(f"{SIM_LIB}/{src.name}", src.read_text(), 0o755)
        for name, folder in [*((n, "sbin") for n in SBIN_STUBS),
                             *((n, "bin") for n in BIN_STUBS)]:
            link = self.path(f"/usr/local/{folder}/{name}")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"{SIM_LIB}/stub")
        self.exec([f"{SIM_LIB}/simctl", "boot"])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
