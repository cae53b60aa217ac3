"""Parsers for setting values: each turns the text of a flag or variable into a value or
raises ValueError with the words the settings error quotes (agent/settings.py)."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def optional_path(text: str) -> Path | None:
    """An absolute path, or empty for none."""
    value = text.strip()
    if not value:
        return None
    if not value.startswith("/") or "\x00" in value:
        raise ValueError("must be an absolute path")
    return Path(value)


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer parser with inclusive bounds (a huge value is refused, never kept)."""

    def parse(text: str) -> int:
        value = text.strip()
        if not re.fullmatch(r"[+-]?\d{1,19}", value):
            raise ValueError(f"must be an integer from {low} to {high}")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return number

    return parse


def seconds_between(low: float, high: float, *, above: bool = False) -> Callable[[str], float]:
    """A finite number of seconds (or days...) within bounds; `above`: strictly above `low`."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        inside = (value > low if above else value >= low) and value <= high
        if not math.isfinite(value) or not inside:
            sign = ">" if above else ">="
            raise ValueError(f"must be a finite number {sign} {low:g} and <= {high:g}")
        return value

    return parse


_VERSION = re.compile(r"[0-9][A-Za-z0-9._+~-]{0,127}")
MAX_URL_LENGTH = 4096
MAX_NAME_BYTES = 255  # NAME_MAX: the cache file name comes from the URL's last segment


def driver_version(text: str) -> str:
    """A release name that is safe as a path segment: digits first, no `/`, no spaces."""
    value = text.strip()
    if not _VERSION.fullmatch(value):
        raise ValueError("must start with a digit and hold only letters, digits and ._+~- "
                         "(at most 128 characters; e.g. 580.105.08-grid-azure)")
    return value


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def driver_url(text: str) -> str:
    """Empty, or an http(s) URL with a host, no control characters (raw or %-encoded),
    and a last path segment that fits a file name."""
    value = text.strip()
    if not value:
        return value
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"is longer than {MAX_URL_LENGTH} characters")
    if _has_control(value) or " " in value:
        raise ValueError("holds control characters or spaces")
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        path = unquote(parts.path, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ValueError("must be an https:// URL with a host")
    if _has_control(path) or _has_control(unquote(parts.query)):
        raise ValueError("holds %-encoded control characters (e.g. %00)")
    name = PurePosixPath(path).name
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"its file name is longer than {MAX_NAME_BYTES} bytes")
    return value


def reboot_sentinel(text: str) -> str:
    """An absolute host path without `..`, or "" (off)."""
    value = text.strip()
    if not value:
        return ""
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ValueError("must be an absolute host file path such as /var/run/reboot-required")
    return str(path)


def short_text(limit: int) -> Callable[[str], str]:
    """Free text with no control characters, at most `limit` characters (labels, names)."""

    def parse(text: str) -> str:
        value = text.strip()
        if len(value) > limit or _has_control(value):
            raise ValueError(f"must be at most {limit} printable characters")
        return value

    return parse


def absolute_path(text: str) -> Path:
    value = text.strip()
    if not value.startswith("/") or _has_control(value) or len(value) > 4096:
        raise ValueError("must be an absolute path")
    return Path(value)


def host_root(text: str) -> Path:
    """A non-empty absolute-or-relative path; existence is checked where it is opened."""
    if not text.strip():
        raise ValueError("must not be empty (the directory where the host's / is mounted)")
    return Path(text)


def host_port(text: str) -> tuple[str, int] | None:
    """`0.0.0.0:9402` -> ("0.0.0.0", 9402); "" or "off" -> None (no server)."""
    value = text.strip()
    if value.lower() in ("", "off"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT with a port 0..65535 (e.g. 0.0.0.0:9402), or off")
    address = host.strip("[]")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if address != "localhost":
            raise ValueError("HOST must be an IP address (e.g. 0.0.0.0, ::, 127.0.0.1) "
                             "or localhost") from None
    return address, int(port)
