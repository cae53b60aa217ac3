"""Settings: one frozen object resolved once from flags, GRID_AGENT_* variables and defaults."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.catalog import parse_sha256
from agent.errors import ConfigError
from agent.pci import PciId, TargetSpec, parse_id_list
from agent.redact import redact_url
from agent.values import (
    absolute_path,
    choice,
    driver_url,
    driver_version,
    host_port,
    host_root,
    int_between,
    optional_path,
    parse_bool,
    reboot_sentinel,
    seconds_between,
    short_text,
)

DAY, HOUR = 86400.0, 3600.0
DEFAULT_TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' terminationMessagePath
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# "" means the catalog's type for the release (proprietary for 580.105.08-grid-azure).
MODULE_TYPES = ("auto", "open", "proprietary", "proprietary-strict")


@dataclass(frozen=True)
class Option:
    """One setting: its field, its variable, its flag (if global), parser, default, help."""

    field: str
    env: str
    parse: Callable[[str], Any]
    default: str
    help: str
    flag: str | None = None

    def label(self) -> str:
        return f"{self.flag} / {self.env}" if self.flag else self.env


# Order matters: host_root's default depends on nsenter.
OPTIONS: tuple[Option, ...] = (
    Option("nsenter", "GRID_AGENT_NSENTER", parse_bool, "true",
           "run host commands through nsenter (false: directly, on the VM itself)", "--nsenter"),
    Option("host_root", "GRID_AGENT_HOST_ROOT", host_root, "/host",
           "where the host's / is seen (default / with --no-nsenter)", "--host-root"),
    Option("host_pid", "GRID_AGENT_HOST_PID", int_between(1, 1 << 22), "1",
           "PID whose namespaces host commands enter", "--host-pid"),
    Option("log_format", "GRID_AGENT_LOG_FORMAT", choice(*LOG_FORMATS), "auto",
           "json lines, console, or auto (json unless a person watches a TTY)", "--log-format"),
    Option("log_level", "GRID_AGENT_LOG_LEVEL", choice(*LOG_LEVELS), "info",
           "least severe log level shown", "--log-level"),
    Option("target_ids", "GRID_AGENT_TARGET_PCI_IDS", parse_id_list, "10de:2bb5",
           "comma-separated vendor:device ids this agent installs for"),
    Option("target_subsystems", "GRID_AGENT_TARGET_SUBSYSTEMS", parse_id_list, "",
           "optional comma-separated subsystem ids (e.g. 1414:2187); empty accepts any"),
    Option("command_timeout", "GRID_AGENT_COMMAND_TIMEOUT",
           seconds_between(0, DAY, above=True), "120",
           "default timeout for one host command, in seconds (0 < s <= 86400)"),
    Option("watch_interval", "GRID_AGENT_WATCH_INTERVAL", seconds_between(0.1, DAY), "60",
           "seconds between health check cycles in `watch` (0.1..86400)"),
    Option("watch_jitter", "GRID_AGENT_WATCH_JITTER", seconds_between(0, HOUR), "5",
           "random extra seconds added to each watch interval (0..3600)"),
    Option("kernel_module_type", "GRID_AGENT_KERNEL_MODULE_TYPE",
           choice("", *MODULE_TYPES), "",
           "auto, open, proprietary, or proprietary-strict (no fallback to open); "
           "empty: the catalog's type for the release"),
    Option("install_timeout", "GRID_AGENT_INSTALL_TIMEOUT", seconds_between(0, DAY, above=True),
           "1800", "seconds the driver installer (.run) may run, and `--wait-lock` waits "
           "(0 < s <= 86400)"),
    Option("wait_lock", "GRID_AGENT_WAIT_LOCK", parse_bool, "false",
           "wait for another grid-agent's host lock instead of exiting 8"),
    # Driver acquisition (agent/catalog.py, agent/install/download.py).
    Option("driver_version", "GRID_AGENT_DRIVER_VERSION", driver_version, "580.105.08-grid-azure",
           "driver release to install (a catalog entry, or any version with a URL)"),
    Option("driver_url", "GRID_AGENT_DRIVER_URL", driver_url, "",
           "installer URL overriding the catalog's (e.g. an in-cluster mirror)"),
    Option("driver_sha256", "GRID_AGENT_DRIVER_SHA256", parse_sha256, "",
           "installer SHA-256 overriding or adding the catalog's pin"),
    Option("allow_unverified", "GRID_AGENT_ALLOW_UNVERIFIED", parse_bool, "false",
           "allow a driver with no pinned SHA-256 (logged as a loud warning)"),
    Option("allow_http_mirror", "GRID_AGENT_ALLOW_HTTP_MIRROR", parse_bool, "false",
           "allow a plain http:// GRID_AGENT_DRIVER_URL (redirects must still go to https)"),
    Option("download_connect_timeout", "GRID_AGENT_DOWNLOAD_CONNECT_TIMEOUT",
           seconds_between(0, HOUR, above=True), "15",
           "seconds to wait for the download server to accept a connection (0 < s <= 3600)"),
    Option("download_read_timeout", "GRID_AGENT_DOWNLOAD_READ_TIMEOUT",
           seconds_between(0, HOUR, above=True), "60",
           "seconds without a byte from the download server before the attempt is retried "
           "(0 < s <= 3600)"),
    Option("download_attempts", "GRID_AGENT_DOWNLOAD_ATTEMPTS", int_between(1, 100), "6",
           "download attempts that make no progress before giving up (backoff between; 1..100)"),
    Option("download_deadline", "GRID_AGENT_DOWNLOAD_DEADLINE",
           seconds_between(0, DAY, above=True), "3600",
           "seconds the whole download may take, retries included, before exit 5 "
           "(0 < s <= 86400)"),
    Option("download_min_rate", "GRID_AGENT_DOWNLOAD_MIN_RATE", int_between(0, 1 << 30), "4096",
           "bytes per second an attempt must average over each 30 s window, else it is "
           "retried (0 turns the rule off; 0..1073741824)"),
    Option("download_max_mb", "GRID_AGENT_DOWNLOAD_MAX_MB", int_between(1, 65536), "4096",
           "MiB a download of unknown size may reach before it is cut (1..65536)"),
    # Host preparation (agent/install/preflight.py, packages.py).
    Option("dpkg_lock_wait", "GRID_AGENT_DPKG_LOCK_WAIT", seconds_between(0, DAY), "300",
           "seconds apt-get waits for the host's dpkg lock (unattended-upgrades at boot; "
           "0..86400)"),
    Option("min_free_mb", "GRID_AGENT_MIN_FREE_MB", int_between(0, 1 << 30), "1024",
           "free MiB required on each host filesystem the install writes to"),
    Option("allow_unsupported_os", "GRID_AGENT_ALLOW_UNSUPPORTED_OS", parse_bool, "false",
           "install on a host OS other than Ubuntu 22.04/24.04 (logged as a warning)"),
    # Health (agent/health/: check, watch, probe).
    Option("expected_profile", "GRID_AGENT_EXPECTED_PROFILE", short_text(128), "",
           "vGPU type the GPUs must report, compared exactly: the profile part (DC-4-96Q, "
           "DC-3Q) or the full product name; empty accepts any RTX Pro 6000 vGPU type"),
    Option("mig_policy", "GRID_AGENT_MIG_POLICY", choice("warn", "fail"), "warn",
           "what MIG mode other than Enabled is: a warning or a failure"),
    Option("license_min_remaining", "GRID_AGENT_LICENSE_MIN_REMAINING",
           seconds_between(300, 7 * DAY), "14400",
           "seconds of vGPU licence lease left below which the lease is at risk (a warning); "
           "leases are short and renewed, so this is hours, not days (300..604800)"),
    Option("check_timeout", "GRID_AGENT_CHECK_TIMEOUT", seconds_between(0, HOUR, above=True), "45",
           "seconds one health check cycle may take before it is cut and reported "
           "(0 < s <= 3600)"),
    Option("listen", "GRID_AGENT_LISTEN", host_port, "0.0.0.0:9402",
           "HOST:PORT for /livez /readyz /status /metrics in `watch`, or off"),
    Option("verdict_file", "GRID_AGENT_VERDICT_FILE", absolute_path,
           "/run/grid-agent-pod/verdict.json",
           "the cached verdict `watch` writes and `probe` reads (in the pod's filesystem)"),
    Option("self_heal", "GRID_AGENT_SELF_HEAL", parse_bool, "true",
           "let `watch` restore the GPU Operator hand-off (marker, mount) of a healthy driver"),
    Option("reboot_sentinel", "GRID_AGENT_REBOOT_SENTINEL", reboot_sentinel, "",
           "host file to create when a driver upgrade needs a reboot (the one kured watches, "
           "e.g. /var/run/reboot-required): the upgrade is staged and the init container "
           "waits for the reboot; empty: exit 6 \"reboot required\" as before"),
    Option("termination_log", "GRID_AGENT_TERMINATION_LOG", optional_path,
           DEFAULT_TERMINATION_LOG, "where the failure line is written (the default only when "
           "Kubernetes provides it)"),
)


@dataclass(frozen=True)
class Settings:
    host_root: Path
    host_pid: int
    nsenter: bool
    log_format: str
    log_level: str
    target_ids: tuple[PciId, ...]
    target_subsystems: tuple[PciId, ...]
    command_timeout: float
    watch_interval: float
    watch_jitter: float
    kernel_module_type: str
    install_timeout: float
    wait_lock: bool
    driver_version: str
    driver_url: str
    driver_sha256: str
    allow_unverified: bool
    allow_http_mirror: bool
    download_connect_timeout: float
    download_read_timeout: float
    download_attempts: int
    download_deadline: float
    download_min_rate: int
    download_max_mb: int
    dpkg_lock_wait: float
    min_free_mb: int
    allow_unsupported_os: bool
    expected_profile: str
    mig_policy: str
    license_min_remaining: float
    check_timeout: float
    listen: tuple[str, int] | None
    verdict_file: Path
    self_heal: bool
    reboot_sentinel: str
    termination_log: Path | None  # resolve with termination_log_path (settings may fail)

    @property
    def target_spec(self) -> TargetSpec:
        return TargetSpec(ids=self.target_ids, subsystems=self.target_subsystems)


def _validate(values: dict[str, Any]) -> None:
    if not values["target_ids"]:
        raise ConfigError("GRID_AGENT_TARGET_PCI_IDS must name at least one vendor:device id")


def _shown(opt: Option, raw: str) -> str:
    """The rejected value as an error shows it: secrets out of URLs, long values cut."""
    text = redact_url(raw) if opt.field == "driver_url" else raw
    return repr(text if len(text) <= 120 else text[:100] + "...")


# Variables that no longer do anything: what replaced them (logged once by the CLI).
RETIRED = {
    "GRID_AGENT_LICENSE_WARN_DAYS": "GRID_AGENT_LICENSE_MIN_REMAINING (real leases are hours "
                                    "long and renewed; a days threshold warned forever)",
}


def retired_in(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, replacement) for each retired variable that is still set: ignored, not fatal."""
    return [(env, why) for env, why in RETIRED.items() if env in environ]


def option(field: str) -> Option:
    return next(o for o in OPTIONS if o.field == field)


def termination_log_path(environ: Mapping[str, str]) -> Path | None:
    """Where the failure message goes, from the same option but without building Settings:
    a settings failure (exit 2) must still reach the termination log."""
    opt = option("termination_log")
    raw = environ.get(opt.env, "").strip()
    try:
        path = opt.parse(raw) if raw else None
    except ValueError:
        path = None
    if path is not None:
        return Path(path)
    default = Path(opt.default)
    return default if default.exists() else None


def build_settings(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
    """Resolve each option: flag beats variable beats default; bad values name both."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = flags.get(opt.field)
        if raw is None:
            raw = environ.get(opt.env)
        if raw is None:
            raw = opt.default
            if opt.field == "host_root" and not values["nsenter"]:
                raw = "/"  # on the VM itself, the host's root is ours
        try:
            values[opt.field] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid value {_shown(opt, raw)} for {opt.label()}: {exc}"
                              ) from None
    _validate(values)
    return Settings(**values)
