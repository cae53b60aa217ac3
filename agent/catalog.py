"""Known driver releases (data, not code branches) and the one release a node wants."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import structlog

from agent.errors import ConfigError
from agent.redact import redact_url

if TYPE_CHECKING:
    from agent.settings import Settings

log = structlog.get_logger(__name__)

DEFAULT_VERSION = "580.105.08-grid-azure"
# An uncatalogued version lets nvidia-installer choose (`--print-recommended-kernel-module-type`).
UNKNOWN_MODULE_TYPE = "auto"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODULE_VERSION = re.compile(r"\d+(?:\.\d+)+")


@dataclass(frozen=True)
class Release:
    """One installer: where it lives, what its bytes hash to, which kernel modules it builds."""

    version: str
    url: str
    sha256: str | None
    size: int | None
    module_type: str
    allow_http: bool = False  # only a configured mirror with GRID_AGENT_ALLOW_HTTP_MIRROR
    source: str = ""  # where the URL (and the pin, when there is one) was published

    @property
    def vgpu_branch(self) -> int | None:
        """NVIDIA vGPU software release of this driver branch (580.x -> 19, 595.x -> 20)."""
        return vgpu_release(self.version)

    @property
    def shown_url(self) -> str:
        """The URL as logs and messages show it: no userinfo, no query (agent/redact.py)."""
        return redact_url(self.url)

    @property
    def filename(self) -> str:
        """The cache file name: the URL's last path segment, else the NVIDIA naming."""
        name = PurePosixPath(unquote(urlsplit(self.url).path)).name
        if not name or name in (".", "..") or name.startswith("."):
            return f"NVIDIA-Linux-x86_64-{self.version}.run"
        return name


CATALOG: dict[str, Release] = {
    r.version: r
    for r in (
        # Pinned in Microsoft's public Azure install scripts (docs/design/formats.md).
        Release(
            version="580.105.08-grid-azure",
            url="https://download.microsoft.com/download/85beffdc-8361-4df4-a823-dcb1b230a7aa/"
                "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run",
            sha256="b360c7edf0686c7e47b1dc7980baa5c7740a00eb372cfafe045a28b4456fb32b",
            size=None,
            # 10de:2bb5 (Blackwell) works with the open modules only: let the installer
            # recommend (it answers `open`), as the GPU Operator's default does.
            module_type="auto",
            source="public Azure install scripts (in no Azure catalog: the reference "
                   "deployment's pin)",
        ),
        # Microsoft Learn, "Install GRID drivers on NCv6 RTX PRO 6000 BSE VMs": vGPU 20,
        # installed with `-M open`. Microsoft publishes no checksum: pin it yourself.
        Release(
            version="595.58.03-grid-azure",
            url="https://download.microsoft.com/download/51239696-ec04-4c02-a6b3-1d9c608fb57c/"
                "NVIDIA-Linux-x86_64-595.58.03-grid-azure.run",
            sha256=None,
            size=None,
            module_type="open",
            source="Microsoft Learn: Install NVIDIA GPU drivers on N-series VMs running Linux "
                   "(NCv6 RTX PRO 6000 BSE)",
        ),
    )
}

# NVIDIA vGPU software release per driver branch (NVIDIA vGPU release notes; Microsoft Learn
# names R570 vGPU 18 and 595.58.03 "v20.x vGPU Unified Driver").
VGPU_RELEASES: dict[int, int] = {535: 16, 550: 17, 570: 18, 580: 19, 595: 20}


@dataclass(frozen=True)
class KnownBadKernel:
    """A kernel that GRID installs are reported to fail on, with the advice and its source."""

    pattern: str  # a regular expression matched at the start of `uname -r`
    problem: str
    advice: str
    source: str

    def matches(self, kernel_release: str) -> bool:
        return re.match(self.pattern, kernel_release.strip()) is not None


KNOWN_BAD_KERNELS: tuple[KnownBadKernel, ...] = (
    KnownBadKernel(
        pattern=r"6\.11(?:[.-]|$)",
        problem="GRID driver installation is reported failing on Azure kernel 6.11",
        advice="downgrade the kernel to 6.8 (e.g. Ubuntu's linux-azure 6.8)",
        source="Microsoft Learn, Install NVIDIA GPU drivers on N-series VMs running Linux: "
               "Supported distributions and drivers, NVIDIA GRID drivers"),
)


def vgpu_release(version: str) -> int | None:
    """The vGPU software release of a driver version's branch; None for an unknown branch."""
    found = _MODULE_VERSION.match(version.strip())
    return VGPU_RELEASES.get(int(found.group(0).split(".")[0])) if found else None


def known_bad_kernel(kernel_release: str) -> tuple[KnownBadKernel, ...]:
    """The catalog's known-bad entries this kernel release matches (usually none)."""
    return tuple(k for k in KNOWN_BAD_KERNELS if k.matches(kernel_release))


def parse_sha256(text: str) -> str:
    """A settings parser: empty, or 64 hex digits (case-insensitive, stored lower-case)."""
    value = text.strip().lower()
    if value and not _SHA256.fullmatch(value):
        raise ValueError("must be 64 hexadecimal digits (a SHA-256)")
    return value


def module_version(version: str) -> str:
    """The kernel module's version: "580.105.08-grid-azure" -> "580.105.08"."""
    found = _MODULE_VERSION.match(version.strip())
    if not found:
        raise ConfigError(f"driver version {version!r} does not start with a version number")
    return found.group(0)


def transport_allowed(url: str, *, allow_http: bool) -> bool:
    """The one HTTPS rule (pin, download, every redirect): https with a host; plain http only
    for a configured mirror that was explicitly allowed."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and allow_http)


def check_url(url: str, *, allow_http: bool) -> None:
    """The configured URL by the one HTTPS rule; ConfigError (exit 2) saying how to fix it."""
    if transport_allowed(url, allow_http=allow_http):
        return
    if urlsplit(url).scheme == "http":
        raise ConfigError(f"driver URL {redact_url(url)} (GRID_AGENT_DRIVER_URL) is plain HTTP; "
                          "use HTTPS, or for an in-cluster "
                          "mirror set GRID_AGENT_ALLOW_HTTP_MIRROR=true")
    raise ConfigError(f"driver URL {redact_url(url)!r} (GRID_AGENT_DRIVER_URL) is not an "
                      "https:// URL")


def _base(settings: Settings) -> Release:
    known = CATALOG.get(settings.driver_version)
    if known is not None:
        return known
    if not settings.driver_url:
        raise ConfigError(
            f"driver version {settings.driver_version} is not in the catalog "
            f"(known: {', '.join(sorted(CATALOG))}); set GRID_AGENT_DRIVER_URL and "
            "GRID_AGENT_DRIVER_SHA256 for it")
    return Release(settings.driver_version, settings.driver_url, None, None,
                   UNKNOWN_MODULE_TYPE)


def _pin_sha256(release: Release, settings: Settings) -> Release:
    wanted = settings.driver_sha256
    if not wanted or wanted == release.sha256:
        return release
    if release.sha256:
        log.warning("driver_sha256_overridden", version=release.version,
                    catalog=release.sha256, configured=wanted)
    return replace(release, sha256=wanted, size=None)  # the catalog size was for other bytes


def missing_pin_message(release: Release) -> str:
    """How to obtain a pin, and what running without one means."""
    published = ("its publisher gives no SHA-256" if release.source
                 else "no SHA-256 is configured for it")
    return (
        f"driver {release.version} has no pinned SHA-256 ({published}). To pin it: download "
        f"{release.url} on a trusted machine, run `sha256sum {release.filename}`, and set "
        "GRID_AGENT_DRIVER_SHA256 to its 64 hex digits (a node that downloads other bytes "
        "then refuses them, exit 5). "
        "GRID_AGENT_ALLOW_UNVERIFIED=true instead runs whatever the URL serves as root on "
        "every node, without any integrity check")


def resolve_release(settings: Settings) -> Release:
    """The catalog entry for the pinned version, with GRID_AGENT_DRIVER_* overrides applied."""
    release = _base(settings)
    module_version(release.version)
    if settings.driver_url:
        # A mirror of a catalogued file keeps the catalog's hash: the pin protects the mirror.
        release = replace(release, url=settings.driver_url,
                          allow_http=settings.allow_http_mirror)
    release = _pin_sha256(release, settings)
    check_url(release.url, allow_http=release.allow_http)
    if release.sha256 is None:
        if not settings.allow_unverified:
            raise ConfigError(missing_pin_message(release))
        log.warning("unverified_driver_download",
                    version=release.version, url=release.shown_url,
                    warning="NO SHA-256 PINNED: the installer will run as root on this node "
                            "without any integrity check")
    return release
