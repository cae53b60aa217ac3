"""A full disk, for real: `grid-agent fetch` into a 2 MiB tmpfs cache in a private mount ns."""

import hashlib
import os
import subprocess
import sys

import pytest

from tests.simnode.httpd import random_bytes

pytestmark = pytest.mark.host

DATA = random_bytes(4 << 20)
NAME = "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"
# Mount a small tmpfs as the host cache (only inside this new mount namespace), run the
# agent, then list what it left there before the namespace and its tmpfs vanish.
SCRIPT = """mount -t tmpfs -o size=2m,mode=0755 grid-cache "$1/var/cache/grid-agent" || exit 99
"$2" -m agent --no-nsenter --host-root "$1" fetch; rc=$?
ls -A "$1/var/cache/grid-agent"; exit $rc"""


def fetch_into_small_disk(server, tmp_path):
    host = tmp_path / "host"
    (host / "var/cache/grid-agent").mkdir(parents=True)
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "GRID_AGENT_LOG_FORMAT": "json",
           "GRID_AGENT_DRIVER_URL": server.url(f"/d/{NAME}"),
           "GRID_AGENT_DRIVER_SHA256": hashlib.sha256(DATA).hexdigest(),
           "GRID_AGENT_ALLOW_HTTP_MIRROR": "true", "GRID_AGENT_DOWNLOAD_ATTEMPTS": "2"}
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", SCRIPT, "sh",
         str(host), sys.executable], env=env, capture_output=True, text=True, timeout=60)


def test_enospc_mid_download_is_a_clean_exit_5_with_nothing_left(http_server, tmp_path):
    http_server.add(f"/d/{NAME}", DATA, no_length=True)  # size unknown: the disk fills
    done = fetch_into_small_disk(http_server, tmp_path)
    assert done.returncode == 5, done.stderr
    assert "no space left" in done.stderr and "partial file was removed" in done.stderr
    assert done.stdout == ""  # ls -A of the cache: empty
    assert http_server.count() == 1


def test_known_length_that_cannot_fit_is_refused_before_streaming(http_server, tmp_path):
    http_server.add(f"/d/{NAME}", DATA)
    done = fetch_into_small_disk(http_server, tmp_path)
    assert done.returncode == 5, done.stderr
    assert "not enough space" in done.stderr
    assert done.stdout == ""
