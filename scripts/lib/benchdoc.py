"""Replace one benchmark's section of docs/bench.md with a run's figures (scripts/bench --write)."""

from __future__ import annotations

import datetime
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

HEADER = """# Benchmark figures

Written by `scripts/bench NAME --write` (one section per benchmark, replaced by each
run); do not edit the figures by hand. Targets and what each benchmark does: the
README sections that link here, and the docstring of `scripts/bench.d/NAME`.
"""


def machine() -> str:
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} cores, {int(mem) / (1 << 20):.0f} GiB"


def commit() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() or "unknown"


def section(name: str, rc: int, load: str, output: str, args: list[str]) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = f"it exited {rc}" + ("" if rc == 0 else " (a target was missed, or it failed)")
    command = shlex.join(["scripts/bench", name, *args])
    return (f"## {name}\n\n`{command}` on {when}, commit `{commit()}`, {machine()}, "
            f"load average {load} before the run; {verdict}.\n\n"
            f"```\n{output.rstrip()}\n```\n")


def replace(doc: str, name: str, new: str) -> str:
    """The document with NAME's section replaced (or appended, sections kept sorted)."""
    body = doc if doc.startswith("# ") else HEADER
    head, *parts = re.split(r"(?m)^(?=## )", body)
    sections = {re.match(r"## (\S+)", p).group(1): p.rstrip() + "\n" for p in parts}
    sections[name] = new
    return head.rstrip() + "\n\n" + "\n".join(sections[k] for k in sorted(sections))


def main(argv: list[str]) -> int:
    path, name, rc, load, output, sep, *args = argv
    assert sep == "--", argv
    doc = Path(path)
    old = doc.read_text() if doc.exists() else ""
    text = section(name, int(rc), load, Path(output).read_text(), args)
    doc.write_text(replace(old, name, text))
    print(f"bench: figures written to {path} (section {name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
