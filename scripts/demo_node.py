"""The demo (run by scripts/demo): a simulated node, a local .run, `grid-agent run`, the result."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.installrun import MARKER, STATE, agent_argv, catalog_env  # noqa: E402
from tests.simnode.driver_run import build_fake_run  # noqa: E402
from tests.simnode.host import SimNode  # noqa: E402
from tests.simnode.httpd import FaultServer  # noqa: E402


@contextlib.contextmanager
def serve(run: Path) -> Iterator[str]:
    """The rig's loopback-only HTTP server with the .run on it; its URL."""
    server = FaultServer().start()
    try:
        server.add(f"/{run.name}", run.read_bytes())
        yield server.url(f"/{run.name}")
    finally:
        server.stop()


def banner(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def grid_agent(node: SimNode, env: dict[str, str], *command: str) -> int:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(agent_argv(node.agent_args(), *command), env=full, cwd=REPO,
                          check=False).returncode


def show(node: SimNode) -> None:
    banner("what the GPU Operator will find on the node")
    smi = node.exec(["nvidia-smi"], check=False)
    print(f"$ nvidia-smi   (exit {smi.returncode})")
    print(smi.stdout.rstrip())
    marker = node.path(MARKER)
    print(f"$ cat {MARKER}")
    print(marker.read_text().rstrip() if marker.exists() else "(absent)")
    mounts = node.exec(["sh", "-c", "grep ' /run/nvidia/driver ' /proc/1/mountinfo || true"])
    print("$ grep /run/nvidia/driver /proc/1/mountinfo")
    print(mounts.stdout.rstrip() or "(not mounted)")
    print(f"$ cat {STATE}")
    print(node.path(STATE).read_text().rstrip())


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="grid-demo-") as tmp:
        banner("building the fake GRID driver .run (real makeself, real kbuild)")
        run = build_fake_run(Path(tmp))
        sha = hashlib.sha256(run.read_bytes()).hexdigest()
        print(f"{run.name}  sha256 {sha}")
        with serve(run) as url, SimNode() as node:
            banner(f"simulated node up: host pid {node.pid}, kernel {node.kernel_release}; "
                   f"serving the .run at {url}")
            # Warnings only: the progress lines and the report are what a person reads.
            env = catalog_env(url, sha, GRID_AGENT_LOG_FORMAT="console",
                              GRID_AGENT_LOG_LEVEL="warning")
            banner("grid-agent run --dry-run (the plan; changes nothing)")
            grid_agent(node, env, "run", "--dry-run")
            banner("grid-agent run")
            code = grid_agent(node, env, "run")
            if code != 0:
                print(f"grid-agent run failed with exit code {code}")
                return code
            show(node)
            banner("grid-agent run again: the fast path")
            started = time.monotonic()
            code = grid_agent(node, env, "run")
            print(f"(second run: exit {code}, {time.monotonic() - started:.2f}s)")
            banner("tearing down the simulated node and the server")
    print("done: nothing is left running or mounted on this machine")
    return code


if __name__ == "__main__":
    sys.exit(main())
