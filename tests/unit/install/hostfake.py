"""A scripted host for the host-preparation steps: a HostRoot tree as data and a fake runner."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import HostCommandError
from agent.host.root import HostRoot
from agent.host.runner import CommandResult


@dataclass
class Rule:
    prefix: tuple[str, ...]
    rc: int = 0
    stdout: str = ""
    stderr: str = ""
    effect: Callable[[list[str]], None] | None = None
    times: int | None = None  # None: forever


@dataclass
class FakeRunner:
    """Answers argv by the first matching prefix rule; an unscripted command fails the test."""

    rules: list[Rule] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    envs: list[dict | None] = field(default_factory=list)

    def on(self, *prefix: str, rc=0, stdout="", stderr="", effect=None, times=None):
        self.rules.append(Rule(tuple(prefix), rc, stdout, stderr, effect, times))
        return self

    def run(self, argv, *, timeout=None, check=True, env=None):
        argv = list(argv)
        self.calls.append(argv)
        self.envs.append(env)
        rule = next((r for r in self.rules if tuple(argv[: len(r.prefix)]) == r.prefix
                     and r.times != 0), None)
        if rule is None:
            raise AssertionError(f"unscripted host command {argv}")
        if rule.times is not None:
            rule.times -= 1
        if rule.effect is not None:
            rule.effect(argv)
        if check and rule.rc:
            raise HostCommandError(argv, rule.rc, rule.stdout, rule.stderr)
        return CommandResult(tuple(argv), rule.rc, rule.stdout, rule.stderr, 0.01)

    def commands(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


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
        import shutil

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
