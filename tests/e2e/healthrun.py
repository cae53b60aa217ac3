"""Drive `check` and `watch` against the simulated node (PCI from umockdev, like install)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.installrun import REPO, _environ, agent_argv, parse_events, run_agent


def check(node, env: dict[str, str], *extra: str):
    """`grid-agent check --json`: (exit code, verdict dict or None, the run)."""
    run = run_agent(node.agent_args(), env, "check", "--json", *extra, timeout=120)
    try:
        verdict = json.loads(run.stdout) if run.stdout.strip() else None
    except ValueError:
        verdict = None
    return run.returncode, verdict, run


def statuses(verdict: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in verdict["checks"]}


def reason(verdict: dict, name: str) -> str:
    return next(c["reason"] for c in verdict["checks"] if c["name"] == name)


@dataclass
class Watch:
    """A running `grid-agent watch`; its JSON log events collected by a reader thread."""

    proc: subprocess.Popen
    events: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            for event in parse_events(line):
                with self.lock:
                    self.events.append(event)

    def named(self, name: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = 60, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.named(name)
                     if all(e.get(k) == v for k, v in match.items())]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"watch gave no {name} {match} (#{count}); "
                             f"last events: {self.events[-5:]}")

    @property
    def port(self) -> int:
        return int(self.wait_event("http_listening")["port"])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, timeout: float = 5) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout=timeout)
        if self.reader is not None:  # its last lines read: `events` is the whole log
            self.reader.join(timeout=timeout)
        return code


def start_watch(node, env: dict[str, str], tmp: Path, **extra: str) -> Watch:
    full = {**env, "GRID_AGENT_LISTEN": "127.0.0.1:0", "GRID_AGENT_WATCH_INTERVAL": "0.5",
            "GRID_AGENT_WATCH_JITTER": "0", "GRID_AGENT_VERDICT_FILE": str(tmp / "verdict.json"),
            "GRID_AGENT_LOG_FORMAT": "json", **extra}
    proc = subprocess.Popen(agent_argv(node.agent_args(), "watch"), env=_environ(full),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    watch = Watch(proc)
    watch.reader = threading.Thread(target=watch._read, daemon=True)
    watch.reader.start()
    return watch


def python_pid(watch: Watch) -> int:
    """The agent's own PID: umockdev-run's child that runs python."""
    todo = [watch.proc.pid]
    while todo:
        pid = todo.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in cmdline and os.path.basename(cmdline[0]).startswith(b"python"):
            return pid
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(k) for k in (task / "children").read_text().split()]
    raise AssertionError("no python process under the watch")
