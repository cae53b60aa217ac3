"""What the install would decide about the build's compiler and another NVIDIA driver, from
files only: for the dry run's Facts and for `detect` (the judgements stay in compiler.py and
foreign.py)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.driver.foreign import ForeignDriver, find_foreign, ours_of
from agent.driver.record import InstallRecord, read_record
from agent.errors import AgentError
from agent.host import host_runner
from agent.host.kernel import host_kernel_release
from agent.host.root import HostRoot
from agent.install.compiler import CompilerOutlook, compiler_outlook
from agent.install.foreign import removal
from agent.settings import Settings


def build_outlook(root: HostRoot, kernel_release: str, pin_version: str,
                  record: InstallRecord | None) -> tuple[CompilerOutlook | None, ForeignDriver]:
    """The build's compiler (None: kernel unknown) and another NVIDIA driver, as judged by
    the install's own functions."""
    compiler = compiler_outlook(root, kernel_release) if kernel_release else None
    return compiler, find_foreign(root, pin_version, ours_of(record))


@dataclass(frozen=True)
class BuildView:
    """`detect`'s lines on the build and on another NVIDIA driver."""

    compiler: CompilerOutlook | None
    foreign: ForeignDriver
    kernel_unknown: str = ""  # why the host's kernel release is unknown

    def lines(self) -> list[str]:
        compiler = (self.compiler.describe() if self.compiler
                    else f"compiler: unknown ({self.kernel_unknown})")
        other = (f"another NVIDIA driver: {self.foreign.describe()}; install would "
                 f"{removal(self.foreign)}" if self.foreign
                 else "another NVIDIA driver: none")
        return [compiler, other]

    def as_dict(self) -> dict[str, object]:
        seen, found = self.compiler, self.foreign
        return {
            "build": None if seen is None else {
                "kernel_release": seen.kernel_release,
                "kernel_compiler": seen.kernel.text if seen.kernel else None,
                "host_gcc": seen.host.version if seen.host else None,
                "cc": seen.cc, "installs_compiler": seen.installs, "reason": seen.describe()},
            "build_unknown": self.kernel_unknown or None,
            "foreign_driver": None if not found else {
                "packages": list(found.packages), "dkms_versions": list(found.dkms_versions),
                "source_trees": list(found.source_trees),
                "dkms_modules": list(found.dkms_modules), "aks_prebake": found.aks_prebake,
                "install_would": removal(found)},
        }


def build_view(settings: Settings, root: HostRoot) -> BuildView:
    """One `uname -r` on the host (the kernel's own release), then files only."""
    from agent.catalog import module_version

    try:
        kernel, unknown = host_kernel_release(host_runner(settings)), ""
    except AgentError as exc:  # detect reports; it never fails for want of a kernel release
        kernel, unknown = "", exc.message
    compiler, foreign = build_outlook(root, kernel, module_version(settings.driver_version),
                                      read_record(root))
    return BuildView(compiler, foreign, unknown)
