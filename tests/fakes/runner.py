"""The one fake HostRunner: answers argv by the first matching prefix rule, records every call.

An unscripted command fails the test. Presets (smi_runner, mounting_runner) are rule sets for
what many tests play: nvidia-smi, mount(8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import HostCommandError, HostCommandTimeout
from agent.host.runner import CommandResult
from tests.fakes.smi import fixture

Reply = Callable[[list[str]], tuple[int, str]]  # argv -> (exit code, stdout)


@dataclass
class Rule:
    prefix: tuple[str, ...]
    rc: int = 0
    stdout: str = ""
    stderr: str = ""
    effect: Callable[[list[str]], None] | None = None  # e.g. write the file the command would
    times: int | None = None  # None: forever
    reply: Reply | None = None  # a dynamic answer instead of rc/stdout
    fails: str | None = None  # "missing" (could not start) | "timeout"


@dataclass
class FakeRunner:
    rules: list[Rule] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)
    envs: list[dict | None] = field(default_factory=list)

    def on(self, *prefix: str, rc=0, stdout="", stderr="", effect=None, times=None, reply=None,
           fails=None) -> FakeRunner:
        """Script argv starting with `prefix` (no prefix: any command); first rule wins."""
        self.rules.append(Rule(tuple(prefix), rc, stdout, stderr, effect, times, reply, fails))
        return self

    def run(self, argv, *, timeout=None, check=True, env=None) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        self.timeouts.append(timeout)
        self.envs.append(env)
        rule = next((r for r in self.rules if tuple(argv[: len(r.prefix)]) == r.prefix
                     and r.times != 0), None)
        if rule is None:
            raise AssertionError(f"unscripted host command {argv}")
        if rule.times is not None:
            rule.times -= 1
        if rule.fails == "missing":
            raise HostCommandError(argv, None, reason="could not start: No such file or directory")
        if rule.fails == "timeout":
            raise HostCommandTimeout(argv, None, "", "", reason=f"timed out after {timeout}s")
        if rule.effect is not None:
            rule.effect(argv)
        rc, stdout = rule.reply(argv) if rule.reply else (rule.rc, rule.stdout)
        if check and rc:
            raise HostCommandError(argv, rc, stdout, rule.stderr)
        return CommandResult(tuple(argv), rc, stdout, rule.stderr, 0.01)

    def commands(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


def smi_runner(*, plain_code: int = 0, plain_out: str | None = None, xml_code: int = 0,
               xml_out: str | None = None, fails: str | None = None) -> FakeRunner:
    """The host's nvidia-smi: the table (plain_code) and `-q -x` (xml_code), or a failure."""
    runner = FakeRunner()
    if fails:
        return runner.on("nvidia-smi", fails=fails)
    xml = fixture("healthy-v13.xml") if xml_out is None else xml_out
    table = fixture("smi-table.txt") if plain_out is None else plain_out
    return (runner.on("nvidia-smi", "-q", "-x", rc=xml_code, stdout=xml)
            .on("nvidia-smi", rc=plain_code, stdout=table))


RBIND = "31 25 8:1 / /run/nvidia/driver rw shared:1 - ext4 /dev/sda1 rw\n"


def mounting_runner(mountinfo: Path, runner: FakeRunner | None = None) -> FakeRunner:
    """mount(8) of the hand-off as the kernel does it, kept in the host's mountinfo file:
    each `mount --rbind` stacks, each `umount --lazy` takes the top mount at its path off."""
    def mount(argv: list[str]) -> None:
        mountinfo.write_text(mountinfo.read_text() + RBIND)

    def umount(argv: list[str]) -> None:
        lines = mountinfo.read_text().splitlines(keepends=True)
        at = [i for i, line in enumerate(lines) if line.split()[4] == argv[-1]]
        if at:
            del lines[at[-1]]
        mountinfo.write_text("".join(lines))

    return ((runner or FakeRunner()).on("mount", "--rbind", effect=mount)
            .on("umount", "--lazy", effect=umount))
