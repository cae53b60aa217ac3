"""A fake HostRunner for nvidia-smi: canned results per argv, recorded calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import HostCommandError, HostCommandTimeout
from agent.host.runner import CommandResult

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@dataclass
class FakeSmiRunner:
    """`nvidia-smi` answers (plain_code, plain_out); `-q -x` answers (xml_code, xml_out)."""

    plain_code: int = 0
    plain_out: str = field(default_factory=lambda: fixture("smi-table.txt"))
    xml_code: int = 0
    xml_out: str = field(default_factory=lambda: fixture("healthy-v13.xml"))
    hang: bool = False
    missing: bool = False
    calls: list = field(default_factory=list)

    def run(self, argv, *, timeout=None, check=True, env=None):
        self.calls.append((tuple(argv), timeout))
        if self.missing:
            raise HostCommandError(argv, None, reason="could not start: No such file or directory")
        if self.hang:
            raise HostCommandTimeout(argv, None, "", "", reason=f"timed out after {timeout}s")
        code, out = ((self.xml_code, self.xml_out) if "-x" in argv
                     else (self.plain_code, self.plain_out))
        return CommandResult(tuple(argv), code, out, "", 0.01)
