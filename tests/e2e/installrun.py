"""Run the real agent (a subprocess, PCI from umockdev) against a simulated node."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.simnode.host import second_kernel_release

REPO = Path(__file__).resolve().parents[2]
DEVICES = REPO / "tests/umockdev/devices"
MARKER = "/run/nvidia/validations/.driver-ctr-ready"
STATE = "/var/lib/grid-agent/state.json"
VERSION = "580.105.08-grid-azure"


def catalog_env(url: str, sha256: str, **extra: str) -> dict[str, str]:
    """The catalog pointed at the local server, as an operator would for a mirror."""
    env = {
        "GRID_AGENT_DRIVER_VERSION": VERSION,
        "GRID_AGENT_DRIVER_URL": url,
        "GRID_AGENT_DRIVER_SHA256": sha256,
        "GRID_AGENT_ALLOW_HTTP_MIRROR": "true",
        "GRID_AGENT_LOG_FORMAT": "json",
        "GRID_AGENT_TERMINATION_LOG": os.devnull,
    }
    env.update(extra)
    return env


def agent_argv(host_args: list[str], *command: str, device: str = "target") -> list[str]:
    return ["umockdev-run", "-d", str(DEVICES / f"{device}.umockdev"), "--",
            sys.executable, "-m", "agent", *host_args, *command]


def _environ(env: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("GRID_AGENT_")}
    return {**keep, **env, "PYTHONPATH": str(REPO)}


@dataclass
class AgentRun:
    returncode: int
    stdout: str
    stderr: str
    events: list[dict] = field(default_factory=list)

    def named(self, event: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == event]

    def steps(self, event: str = "step_started") -> list[str]:
        return [e["name"] for e in self.named(event)]

    def changed(self) -> dict[str, bool]:
        return {e["name"]: e["changed"] for e in self.named("step_finished")}

    def error(self) -> str:
        failed = self.named("command_failed")
        return failed[-1]["error"] if failed else ""


def parse_events(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                events.append(item)
    return events


def run_agent(host_args: list[str], env: dict[str, str], *command: str, device: str = "target",
              timeout: float = 300) -> AgentRun:
    proc = subprocess.run(agent_argv(host_args, *command, device=device), env=_environ(env),
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=REPO)
    return AgentRun(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stderr))


def run_agent_until(host_args: list[str], env: dict[str, str], *command: str, event: str,
                    then, timeout: float = 300) -> tuple[AgentRun, bool]:
    """Run the agent; the moment it logs `event`, call `then(proc)` (it is still running).

    Returns the whole run and whether the event came. Waits on the agent's own log line, not
    on the clock: a slow start-up cannot make the test race the agent. `timeout` only ends
    a hung agent (the test then fails), it is no guess about how long anything takes.
    """
    proc = subprocess.Popen(agent_argv(host_args, *command), env=_environ(env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines, seen = [], False
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            parsed = parse_events(line)
            if not seen and parsed and parsed[0].get("event") == event:
                seen = True
                then(proc)
        out, rest = proc.communicate()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + rest
    return AgentRun(proc.returncode, out, text, parse_events(text)), seen


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def kill_at_step(host_args: list[str], env: dict[str, str], step: str, *,
                 timeout: float = 300, event: str | None = None,
                 until: Callable[[], bool] | None = None) -> AgentRun:
    """SIGKILL the agent and every process it started the moment `step` starts (or, with
    `event`, when that log event comes after the step started; with `until`, once that
    also holds: a state on the host, never a delay that a fast machine outruns).

    Killing the whole tree plays a container runtime killing the pod's cgroup.
    """
    proc = subprocess.Popen(agent_argv(host_args, "install"), env=_environ(env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines, deadline = [], time.monotonic() + timeout
    assert proc.stderr is not None
    in_step = False
    for line in proc.stderr:
        lines.append(line)
        parsed = parse_events(line)
        if parsed and parsed[0].get("event") == "step_started":
            in_step = parsed[0].get("name") == step
        name = parsed[0].get("event") if parsed else None
        hit = in_step and name == (event or "step_started")
        if hit:
            while until is not None and not until() and time.monotonic() < deadline:
                time.sleep(0.01)
            tree = [proc.pid, *_descendants(proc.pid)]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        if time.monotonic() > deadline:
            break
    proc.kill()
    out, rest = proc.communicate()
    text = "".join(lines) + rest
    return AgentRun(proc.returncode, out, text, parse_events(text))


@pytest.fixture
def catalog(http_server, fake_run, fake_run_sha256) -> dict[str, str]:
    """Agent environment: the catalog's pin served by the loopback server (the fake .run)."""
    path = f"/{fake_run.name}"
    http_server.add(path, fake_run.read_bytes())
    return catalog_env(http_server.url(path), fake_run_sha256)


def host_text(node, host_path: str) -> str | None:
    path = node.path(host_path)
    return path.read_text() if path.exists() else None


def driver_root_mounted(node) -> bool:
    mountinfo = node.path("/proc/1/mountinfo").read_text()
    return any(line.split()[4] == "/run/nvidia/driver" for line in mountinfo.splitlines())


def record(node) -> dict | None:
    text = host_text(node, STATE)
    return json.loads(text) if text else None


@pytest.fixture
def next_kernel(simnode) -> str:
    """A second kernel whose real headers are here (Debian's cloud flavour): the update."""
    release = second_kernel_release(simnode.kernel_release)
    if release is None:
        pytest.skip("one kernel's headers here: apt-get install linux-headers-cloud-amd64")
    return release


def install(node, env: dict[str, str], **kw) -> AgentRun:
    return run_agent(node.agent_args(), env, "install", **kw)
