"""scripts/simnode: up prints the agent's arguments, down leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.simnode

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/simnode"


def simnode(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--name", name, *args],
                          capture_output=True, text=True, check=check, timeout=60)


def test_up_status_scenario_exec_down():
    name = f"pytest-{os.getpid()}"
    before = Path("/proc/self/mountinfo").read_text()
    up = simnode(name, "up", "--scenario", "unlicensed")
    try:
        found = re.search(r"--host-pid (\d+) --host-root /proc/(\d+)/root", up.stdout)
        assert found and found[1] == found[2], up.stdout
        pid = int(found[1])
        assert Path(f"/proc/{pid}/root/etc/grid-sim/scenarios").read_text() == "unlicensed\n"
        assert "scenarios: unlicensed" in simnode(name, "status").stdout
        simnode(name, "scenario", "mig-disabled")
        release = simnode(name, "exec", "--", "uname", "-r").stdout.strip()
        assert release and release != os.uname().release
        assert simnode(name, "up", check=False).returncode != 0  # one node per name
    finally:
        simnode(name, "down")
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(f"/run/grid-sim-{name}").exists()
    assert Path("/proc/self/mountinfo").read_text() == before
    assert simnode(name, "status", check=False).returncode != 0
