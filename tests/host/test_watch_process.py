"""`grid-agent watch` as a real process: endpoints on 127.0.0.1, probe, SIGTERM within 1 s."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[2]


def start_watch(tmp_path, **env):
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("GRID_AGENT_")},
            "GRID_AGENT_LISTEN": "127.0.0.1:0", "GRID_AGENT_LOG_FORMAT": "json",
            "GRID_AGENT_VERDICT_FILE": str(tmp_path / "pod/verdict.json"),
            "GRID_AGENT_WATCH_INTERVAL": "0.2", "GRID_AGENT_WATCH_JITTER": "0",
            "PYTHONPATH": str(REPO), **env}
    # This machine has no RTX PRO 6000: the node is "not applicable" and nothing is run.
    return subprocess.Popen([sys.executable, "-m", "agent", "--no-nsenter", "--host-root",
                             str(tmp_path), "watch"], env=full, cwd=REPO,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc, event, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("event") == event:
            return item
    raise AssertionError(f"no {event} event from watch")


def test_watch_serves_probes_and_stops_on_sigterm_within_a_second(tmp_path):
    proc = start_watch(tmp_path)
    try:
        port = wait_for(proc, "http_listening")["port"]
        assert wait_for(proc, "health_verdict")["state"] == "not_applicable"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert (resp.status, resp.read()) == (200, b"not_applicable\n")
        ready = subprocess.run([sys.executable, "-m", "agent", "probe", "ready"], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO),
                                    "GRID_AGENT_VERDICT_FILE": str(tmp_path / "pod/verdict.json")},
                               capture_output=True, text=True, timeout=30, check=False)
        assert ready.returncode == 0, ready.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        # Within a second of the signal, by the agent's own log: Python's teardown on a
        # loaded machine is not what is measured.
        events = {}
        for line in proc.stderr.read().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            events.setdefault(item.get("event"), item["timestamp"])
        signalled, stopped = events["watch_signal"], events["watch_stopped"]
        assert (datetime.fromisoformat(stopped) - datetime.fromisoformat(signalled)
                ).total_seconds() < 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
