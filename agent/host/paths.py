"""Where the agent and the driver keep things on the host: one table (cloud-init's Paths)."""

from __future__ import annotations

# The agent's own state.
CACHE_DIR = "/var/cache/grid-agent"  # installer downloads, keyed by sha256
STATE_DIR = "/var/lib/grid-agent"
RECORD = f"{STATE_DIR}/state.json"  # the install record (version, kernel, module type, digest)
GRIDD_STARTED_WITH = f"{STATE_DIR}/gridd.conf.sha256"  # digest of the gridd.conf we wrote
LOCK = "/run/grid-agent/lock"

# The GPU Operator hand-off (docs/design/gpu-operator-contract.md 1).
MARKER = "/run/nvidia/validations/.driver-ctr-ready"
DRIVER_ROOT = "/run/nvidia/driver"  # rbind of host `/`

# The driver's own files.
INSTALLER_LOG = "/var/log/nvidia-installer.log"
GRIDD_CONF = "/etc/nvidia/gridd.conf"
SMI = "/usr/bin/nvidia-smi"  # the validator checks exactly this path
PROC_DRIVER_VERSION = "/proc/driver/nvidia/version"

# The kernel's view.
SYS_MODULE = "/sys/module"
MODULES_DIR = "/lib/modules"
MOUNTINFO = "/proc/1/mountinfo"

# The README's "where things live on the host" table, in its order.
TABLE: tuple[tuple[str, str], ...] = (
    ("download cache, keyed by sha256", f"{CACHE_DIR}/"),
    ("installed-state record (version, kernel, module type, config digest)", RECORD),
    ("lock", LOCK),
    ("GPU Operator marker", MARKER),
    ("driver root for the operator", f"{DRIVER_ROOT} (rbind of `/`)"),
    ("installer log", INSTALLER_LOG),
)


def sys_module(name: str) -> str:
    """A module's sysfs directory; sysfs uses underscores (nvidia-uvm -> nvidia_uvm)."""
    return f"{SYS_MODULE}/{name.replace('-', '_')}"
