"""GRID licensing: /etc/nvidia/gridd.conf the Azure way, and nvidia-gridd enabled and active."""

from __future__ import annotations

import hashlib
import os
import re

import structlog

from agent.errors import HostCommandError, InstallError
from agent.host.paths import GRIDD_CONF
from agent.host.paths import GRIDD_STARTED_WITH as STARTED_WITH
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.host.systemd import UNIT_DIRS, host_has_systemd, unit_exists, unit_status
from agent.install.modules import failure_lines, processes_named

log = structlog.get_logger(__name__)

TEMPLATE = "/etc/nvidia/gridd.conf.template"
GRIDD = "nvidia-gridd"
GRIDD_UNIT = f"{GRIDD}.service"
# The conf the running daemon was (re)started with, so a crash between writing the conf
# and restarting the daemon is caught on the next run.
# Azure's GRID steps: the licence comes with the VM, no server, no UI
# (docs/design/gpu-operator-contract.md 4).
AZURE_KEYS = (("IgnoreSP", "FALSE"), ("EnableUI", "FALSE"))
_KEY_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
KEPT_HEADER = "# Kept from the gridd.conf that was here before (grid-agent)"


def parse_keys(text: str) -> dict[str, str]:
    """Uncommented `Key=Value` lines, in order; a repeated key's last value wins (as gridd)."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match:
            keys.pop(match.group(1), None)
            keys[match.group(1)] = match.group(2)
    return keys


def _dropped(key: str, value: str) -> bool:
    # FeatureType=0 means "unlicensed": Azure's steps delete that line.
    return key == "FeatureType" and value == "0"


def render_gridd_conf(template: str, existing: str | None) -> str:
    """The template with the Azure keys, where an operator's existing values win."""
    current = parse_keys(existing or "")
    out: list[str] = []
    seen: set[str] = set()
    for line in template.splitlines():
        match = _KEY_LINE.match(line)
        if not match:
            out.append(line)
            continue
        key = match.group(1)
        value = current.get(key, match.group(2))
        if key not in seen and not _dropped(key, value):
            out.append(f"{key}={value}")
        seen.add(key)
    for key, default in AZURE_KEYS:
        if key not in seen:
            out.append(f"{key}={current.get(key, default)}")
            seen.add(key)
    kept = [(k, v) for k, v in current.items() if k not in seen and not _dropped(k, v)]
    if kept:
        out += ["", KEPT_HEADER, *(f"{k}={v}" for k, v in kept)]
    return "\n".join(out).rstrip("\n") + "\n"


def _read_source(root: HostRoot, host_path: str) -> tuple[str | None, int]:
    """(text, permission bits) of a regular file, never through a link; (None, 0o644) if absent.

    A link is refused rather than copied (issue 12): the conf is replaced by a rename, so
    following the link would copy whatever it points at (a secrets file) into a new file
    and silently detach the operator's link from the file the host actually reads.
    """
    target = root.link_target(host_path)
    if target is not None:
        raise InstallError(
            f"refusing {host_path}: it is a symbolic link (to {target}); the agent "
            "rewrites this file and would copy the link's target into it",
            remedy=f"replace the link with a regular root-owned file (`cp --remove-destination "
                   f"\"$(readlink -f {host_path})\" {host_path}` on the node), then retry")
    try:
        fd = root.open_file(host_path, os.O_RDONLY)
    except FileNotFoundError:
        return None, 0o644
    except OSError as exc:
        raise InstallError(f"cannot read {host_path}: {exc.strerror or exc}",
                           remedy=f"make {host_path} a regular file") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode & 0o777
        return handle.read().decode("utf-8", errors="replace"), mode


def ensure_gridd_conf(root: HostRoot) -> bool:
    """Create or merge /etc/nvidia/gridd.conf; write it atomically only when it changes.

    Never more readable than its sources: an operator's 0600 gridd.conf stays 0600.
    """
    template, template_mode = _read_source(root, TEMPLATE)
    existing, existing_mode = _read_source(root, GRIDD_CONF)
    if template is None:
        if existing is None:
            raise InstallError(f"{TEMPLATE} is missing: the installed driver is not a GRID "
                               "build", remedy="install the Azure GRID driver (a -grid-azure .run)")
        template = ""  # keep the operator's file, only make sure of the Azure keys
    wanted = render_gridd_conf(template, existing)
    if wanted == existing:
        log.info("gridd_conf_ready", changed=False)
        return False
    root.write_file(GRIDD_CONF, wanted, mode=template_mode & existing_mode & 0o644)
    log.info("gridd_conf_written", created=existing is None, changed=True)
    return True


def _conf_digest(root: HostRoot) -> str:
    return hashlib.sha256(root.read_nofollow(GRIDD_CONF) or b"").hexdigest()


def ensure_gridd_running(root: HostRoot, runner: HostRunner) -> bool:
    """nvidia-gridd enabled and active, restarted when gridd.conf changed since its start."""
    digest = _conf_digest(root)
    started_with = (root.read_nofollow(STARTED_WITH) or b"").decode(errors="replace").strip()
    if not host_has_systemd(root):
        changed = _gridd_without_systemd(root, runner)
    else:
        changed = _gridd_unit(root, runner, restart=started_with != digest)
    if started_with != digest:
        root.write_file(STARTED_WITH, digest + "\n", mode=0o600)
    log.info("gridd_running", changed=changed)
    return changed


def _gridd_unit(root: HostRoot, runner: HostRunner, *, restart: bool) -> bool:
    if not unit_exists(root, GRIDD_UNIT):
        # Some 550 GRID builds shipped no unit and nodes stayed Unlicensed (aks-gpu #90).
        raise InstallError(
            f"the {GRIDD_UNIT} systemd unit is missing (looked in {', '.join(UNIT_DIRS)}); "
            "without nvidia-gridd the vGPU stays unlicensed",
            remedy="install a GRID driver build that ships nvidia-gridd.service")
    enabled, active = unit_status(runner, GRIDD_UNIT)
    if enabled and active and not restart:
        return False
    if not (enabled and active):
        _systemctl(runner, "enable", "--now", GRIDD_UNIT)
    if active and restart:  # enable --now leaves a running daemon on its old conf
        _systemctl(runner, "restart", GRIDD_UNIT)
    return True


def _gridd_without_systemd(root: HostRoot, runner: HostRunner) -> bool:
    if processes_named(root, GRIDD):
        return False
    _run(runner, [GRIDD], "starting nvidia-gridd failed")
    return True


def _systemctl(runner: HostRunner, *args: str) -> None:
    _run(runner, ["systemctl", *args], f"systemctl {' '.join(args)} failed")


def _run(runner: HostRunner, argv: list[str], what: str) -> None:
    try:
        runner.run(argv, timeout=120)
    except HostCommandError as exc:
        raise InstallError(f"{what}: {failure_lines(exc)}",
                           remedy="read `journalctl -u nvidia-gridd` on the node") from exc
