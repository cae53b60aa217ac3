"""The one host-tree builder: files of a fake host under tmp_path, written as data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.host.root import HostRoot


class Tree:
    """Files of a fake host under tmp_path, written as data."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = HostRoot(base)

    def write(self, host_path: str, text: str = "", mode: int | None = None) -> Path:
        path = self.root.path(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if mode is not None:
            path.chmod(mode)
        return path

    def link(self, host_path: str, target: str) -> Path:
        path = self.root.path(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        return path

    def mkdir(self, host_path: str) -> Path:
        path = self.root.path(host_path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read(self, host_path: str) -> str:
        return self.root.path(host_path).read_text()

    def module(self, name: str, refcnt: int = 0, holders: tuple[str, ...] = (),
               version: str | None = None) -> None:
        """A loaded module as /sys/module shows it."""
        self.write(f"/sys/module/{name}/refcnt", f"{refcnt}\n")
        self.mkdir(f"/sys/module/{name}/holders")
        for holder in holders:
            self.mkdir(f"/sys/module/{name}/holders/{holder}")
        if version is not None:
            self.write(f"/sys/module/{name}/version", f"{version}\n")

    def unload(self, name: str) -> None:
        shutil.rmtree(self.root.path(f"/sys/module/{name}"))
        for holders in self.root.path("/sys/module").glob("*/holders"):
            target = holders / name
            if target.exists():  # the kernel drops the reference the holder took
                target.rmdir()
                refcnt = holders.parent / "refcnt"
                refcnt.write_text(f"{int(refcnt.read_text()) - 1}\n")

    def process(self, pid: int, comm: str, fds: tuple[str, ...] = ()) -> None:
        """A host process with open files, as /proc/PID/{comm,fd} show it."""
        self.write(f"/proc/{pid}/comm", f"{comm}\n")
        fd_dir = self.mkdir(f"/proc/{pid}/fd")
        for number, target in enumerate(fds):
            os.symlink(target, fd_dir / str(number))

    def executable(self, host_path: str) -> Path:
        return self.write(host_path, "#!/bin/sh\n", mode=0o755)
