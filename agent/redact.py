"""The one redaction of URLs for logs, errors, the termination message, /status and plans.

A mirror URL may carry credentials: `https://user:password@host/...` or a SAS token in the
query string (`?sv=...&sig=...`). Whatever reports a URL shows it through `redact_url`:
scheme, host, port and path only; the userinfo becomes `***@` and a query `?***`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_MARK = "***"
# Any absolute URL inside free text (an exception message from requests/urllib3...).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")


def redact_url(url: str) -> str:
    """`https://u:p@h:1/x.run?sig=s#f` -> `https://***@h:1/x.run?***` (never raises)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MARK
    if not parts.scheme and not parts.netloc:
        return url.split("?", 1)[0] + ("?" + _MARK if "?" in url else "")
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MARK}@{netloc.rpartition('@')[2]}"
    query = _MARK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _secret_parts(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.query] if parts.query else []
    if "@" in parts.netloc:
        found.append(parts.netloc.rpartition("@")[0])
    return found


def redact_text(text: str, *urls: str) -> str:
    """Free text with every URL in it redacted, and the secret parts (query, userinfo) of
    the given URLs removed wherever they appear (e.g. `url: /x.run?sig=...` from urllib3)."""
    out = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    for url in urls:
        for secret in _secret_parts(url):
            if len(secret) >= 3:
                out = out.replace(secret, _MARK)
    return out
