"""Changes that do not touch the kernel modules are applied in place on the fast path.

The fast path (the driver loaded is the pin's) only verifies and re-publishes. What an
operator may change besides the pin is the licensing configuration (`gridd.conf`) and
whether `nvidia-persistenced` runs at boot; neither needs an unload or a reboot. Both
are noticed by file reads only (no host process when nothing changed):

- licensing: `gridd.conf` missing, or its SHA-256 is not the one `nvidia-gridd` was
  started with (`/var/lib/grid-agent/gridd.conf.sha256`): the licensing step runs
  (merge the Azure keys, restart `nvidia-gridd`);
- persistence: with systemd, `nvidia-persistenced.service` is not enabled (its
  `multi-user.target.wants` link is gone): the persistence step runs.

A new download URL (a mirror) is not part of the pin's digest: nothing to do at all.
The step itself is `in_place` in steps.py (it runs the licensing and persistence acts).
"""

from __future__ import annotations

import hashlib

import structlog

from agent.host.paths import GRIDD_CONF, GRIDD_STARTED_WITH
from agent.host.root import HostRoot
from agent.host.systemd import host_has_systemd

log = structlog.get_logger(__name__)

PERSISTENCED_WANTS = "/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"
LICENSING, PERSISTENCE = "licensing", "persistence"


def drift(root: HostRoot) -> dict[str, str]:
    """{step: why} for what differs from what the agent last applied; {} when nothing."""
    found: dict[str, str] = {}
    started_file = root.read_nofollow(GRIDD_STARTED_WITH)
    if started_file is not None:  # the agent applied licensing here before: compare with it
        conf = root.read_nofollow(GRIDD_CONF)
        started = started_file.decode(errors="replace").strip()
        if conf is None:
            found[LICENSING] = f"{GRIDD_CONF} is missing"
        elif hashlib.sha256(conf).hexdigest() != started:
            found[LICENSING] = f"{GRIDD_CONF} changed since nvidia-gridd was started"
    if host_has_systemd(root) and not root.exists(PERSISTENCED_WANTS):
        found[PERSISTENCE] = "nvidia-persistenced.service is not enabled"
    return found
