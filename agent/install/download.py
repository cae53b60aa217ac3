"""Verified, resumable download of the driver installer into the host cache."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urljoin

import requests
import structlog
import tenacity
import urllib3

from agent import __version__
from agent.catalog import Release, transport_allowed
from agent.errors import DownloadError
from agent.host.root import HostRoot
from agent.install import baked, cache
from agent.install.progress import Meter, Progress, tty_progress
from agent.install.retry import ATTEMPTS, RETRY, TooSlow, TransientError, parse_retry_after
from agent.redact import redact_text, redact_url

if TYPE_CHECKING:
    from agent.settings import Settings

log = structlog.get_logger(__name__)

CHUNK = 1 << 20  # 1 MiB reads: few Python iterations per byte, measured in scripts/bench
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class DownloadOptions:
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    attempts: int = ATTEMPTS  # attempts that make no progress; a resume after progress is free
    chunk_size: int = CHUNK
    progress_every: float = 5.0
    max_redirects: int = 5
    max_resumes: int = 100
    deadline: float = 3600.0  # seconds for the whole download, retries and waits included
    min_rate: int = 4096  # bytes/s each attempt must average per window; 0: no rule
    rate_window: float = 30.0  # seconds over which min_rate is judged
    max_bytes: int = 4096 << 20  # cap when the size is unknown (no pin size, no length)


def download_options(settings: Settings) -> DownloadOptions:
    return DownloadOptions(connect_timeout=settings.download_connect_timeout,
                           read_timeout=settings.download_read_timeout,
                           attempts=settings.download_attempts,
                           deadline=settings.download_deadline,
                           min_rate=settings.download_min_rate,
                           max_bytes=settings.download_max_mb << 20)


class _Budget:
    """The whole download's deadline, and each connection's progress windows."""

    def __init__(self, opts: DownloadOptions, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.opts, self.clock = opts, clock
        self.ends = clock() + opts.deadline

    def left(self) -> float:
        return self.ends - self.clock()

    def check_deadline(self, url: str) -> None:
        if self.left() <= 0:
            raise DownloadError(
                f"download from {url} passed its {self.opts.deadline:g} s deadline",
                remedy="check the mirror's speed, or raise GRID_AGENT_DOWNLOAD_DEADLINE")

    def read_timeout(self) -> float:
        return max(0.001, min(self.opts.read_timeout, self.left()))


class _Window:
    """Bytes seen since the window began; too few at its end is a TooSlow."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.begun, self.bytes = budget.clock(), 0

    def add(self, count: int) -> None:
        opts = self.budget.opts
        self.bytes += count
        now = self.budget.clock()
        span = now - self.begun
        if opts.min_rate <= 0 or span < opts.rate_window:
            return
        if self.bytes < opts.min_rate * span:
            raise TooSlow(f"{self.bytes} bytes in {span:.0f} s, below the minimum of "
                          f"{opts.min_rate} bytes/s (GRID_AGENT_DOWNLOAD_MIN_RATE)")
        self.begun, self.bytes = now, 0


def new_session() -> requests.Session:
    """trust_env stays on: HTTPS_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE are honoured."""
    session = requests.Session()
    # identity: Range offsets must count the file's own bytes, not a gzip stream's.
    session.headers.update({"User-Agent": f"grid-agent/{__version__}",
                            "Accept-Encoding": "identity"})
    return session


class _Part:
    """The temp file and the running SHA-256 of what it holds (the only read of the bytes)."""

    def __init__(self, handle: BinaryIO, path: Path, expected_size: int | None) -> None:
        self.handle = handle
        self.path = path
        self.expected_size = expected_size
        self.total: int | None = expected_size
        self.done = 0
        self.hasher = hashlib.sha256()

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.hasher = hashlib.sha256()
        self.done = 0

    def set_total(self, total: int | None) -> None:
        if total is None:
            return
        if self.expected_size is not None and total != self.expected_size:
            raise DownloadError(f"server announces {total} bytes, the catalog says "
                                f"{self.expected_size}")
        self.total = total

    def write(self, chunk: bytes, max_bytes: int) -> None:
        if self.total is None and self.done + len(chunk) > max_bytes:
            raise DownloadError(f"the download passed {max_bytes >> 20} MiB with no size "
                                "announced or pinned; cut",
                                remedy="check the URL, or raise GRID_AGENT_DOWNLOAD_MAX_MB")
        self.handle.write(chunk)
        self.hasher.update(chunk)
        self.done += len(chunk)
        if self.total is not None and self.done > self.total:
            raise DownloadError(f"server sent more than the {self.total} bytes announced")

    def finish(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())


def _check_target(url: str, *, allow_http: bool, redirect: bool) -> None:
    if transport_allowed(url, allow_http=allow_http):
        return
    raise DownloadError(f"refusing to download from {redact_url(url)}: only HTTPS is allowed"
                        + (" for redirects" if redirect else ""),
                        remedy="point GRID_AGENT_DRIVER_URL at an HTTPS source")


def _classify(resp: requests.Response, url: str) -> None:
    code = resp.status_code
    if code in (200, 206, 416):
        return
    reason = f"{code} {resp.reason or ''}".strip()
    if code in (408, 429) or code >= 500:
        raise TransientError(f"{redact_url(url)} answered {reason}",
                             retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    raise DownloadError(f"{redact_url(url)} answered {reason}",
                        remedy="check GRID_AGENT_DRIVER_VERSION / GRID_AGENT_DRIVER_URL")


def _get(session: requests.Session, release: Release, headers: dict[str, str],
         opts: DownloadOptions, budget: _Budget) -> requests.Response:
    """GET following redirects by hand, so a hop to plain HTTP is refused before it is made."""
    url = release.url
    for hop in range(opts.max_redirects + 1):
        _check_target(url, allow_http=release.allow_http and hop == 0, redirect=hop > 0)
        budget.check_deadline(release.shown_url)
        resp = session.get(url, headers=headers, stream=True, allow_redirects=False,
                           timeout=(min(opts.connect_timeout, budget.read_timeout()),
                                    budget.read_timeout()))
        if resp.status_code in _REDIRECTS and "Location" in resp.headers:
            resp.close()
            url = urljoin(url, resp.headers["Location"])
            log.debug("download_redirect", to=redact_url(url))
            continue
        _classify(resp, url)
        return resp
    raise DownloadError(f"more than {opts.max_redirects} redirects from {release.shown_url}")


def _content_range(resp: requests.Response) -> tuple[int, int | None]:
    value = resp.headers.get("Content-Range", "")
    try:
        span, _, total = value.removeprefix("bytes ").partition("/")
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except ValueError:
        raise TransientError(f"unusable Content-Range {value!r}") from None


def _length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _position(resp: requests.Response, part: _Part) -> None:
    """Line the temp file up with what the response body holds."""
    if resp.status_code == 416:
        part.restart()
        raise TransientError("server refused the resume range; starting over")
    if resp.status_code == 206:
        start, total = _content_range(resp)
        if start != part.done:
            part.restart()
            raise TransientError(f"server resumed at byte {start}, not {part.done}")
        part.set_total(total)
        return
    if part.done:
        log.info("download_range_ignored", discarded=part.done)
        part.restart()
    part.set_total(_length(resp))


def _stream(resp: requests.Response, part: _Part, opts: DownloadOptions, meter: Meter,
            budget: _Budget, url: str) -> None:
    """Body bytes straight off the socket into the file and the hash.

    read1, not iter_content: iter_content fills whole chunks and loses the partial one
    when the connection drops, so a resume would refetch up to a chunk per drop.
    The deadline is checked after every read; a read waits at most the read timeout the
    request started with (never longer than what was left of the deadline then).
    """
    raw = resp.raw
    window = _Window(budget)
    while chunk := raw.read1(opts.chunk_size, decode_content=False):
        part.write(chunk, opts.max_bytes)
        meter.update(part.done, part.total, len(chunk))
        budget.check_deadline(url)
        window.add(len(chunk))


def _one_request(session: requests.Session, release: Release, part: _Part,
                 opts: DownloadOptions, meter: Meter, budget: _Budget) -> None:
    headers = {"Range": f"bytes={part.done}-"} if part.done else {}
    try:
        with _get(session, release, headers, opts, budget) as resp:
            _position(resp, part)
            if part.total is not None:
                cache.check_space(part.path.parent, part.total - part.done)
            _stream(resp, part, opts, meter, budget, release.shown_url)
    except requests.exceptions.SSLError as exc:
        raise DownloadError(f"TLS failure talking to {release.shown_url}: "
                            f"{redact_text(str(exc), release.url)}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            urllib3.exceptions.HTTPError) as exc:
        budget.check_deadline(release.shown_url)  # a read cut at the deadline is past it
        raise TransientError(f"connection to {release.shown_url} failed: "
                             f"{redact_text(str(exc), release.url)}") from None
    except requests.exceptions.RequestException as exc:  # bad URL, undecodable body, ...
        raise DownloadError(f"download from {release.shown_url} failed: "
                            f"{redact_text(str(exc), release.url)}") from None
    if part.total is not None and part.done < part.total:
        raise TransientError(f"body ended at byte {part.done} of {part.total}")


def _attempt(session: requests.Session, release: Release, part: _Part,
             opts: DownloadOptions, meter: Meter, budget: _Budget) -> None:
    """One attempt: resumes at once while each connection moves bytes; a stall or a drip
    below the minimum rate is a failed attempt."""
    for resumes in range(opts.max_resumes + 1):
        before = part.done
        try:
            _one_request(session, release, part, opts, meter, budget)
            return
        except TransientError as exc:
            if isinstance(exc, TooSlow) or part.done <= before or resumes == opts.max_resumes:
                raise
            log.info("download_resuming", at=part.done, total=part.total, error=str(exc))


def _verify(part: _Part, release: Release) -> str:
    got = part.hasher.hexdigest()
    if release.sha256 is not None and got != release.sha256:
        raise DownloadError(f"SHA-256 mismatch for {release.filename}: expected "
                            f"{release.sha256}, got {got} (the download was discarded)",
                            remedy="check the mirror or GRID_AGENT_DRIVER_SHA256")
    if part.total is not None and part.done != part.total:
        raise DownloadError(f"size mismatch: expected {part.total} bytes, got {part.done}")
    return got


def _transfer(session: requests.Session, release: Release, root: HostRoot,
              opts: DownloadOptions, retrying: tenacity.Retrying, meter: Meter) -> Path:
    directory = cache.cache_dir(root)
    handle, path = cache.open_part(directory, release.filename)
    with cache.part_removed_on_failure(path, directory, "cannot write the installer cache"):
        with handle:
            part = _Part(handle, path, release.size)
            budget = _Budget(opts)
            # No backoff sleep may cross the deadline: past it, the next attempt refuses.
            stop = tenacity.stop_after_attempt(opts.attempts) | tenacity.stop_before_delay(
                opts.deadline)
            try:
                retrying.copy(stop=stop)(_attempt, session, release, part, opts, meter, budget)
            except TransientError as exc:
                raise DownloadError(f"gave up after {opts.attempts} attempt(s) without "
                                    f"progress: {exc}",
                                    remedy="check the node's network, proxy "
                                           "(HTTPS_PROXY/NO_PROXY) and the URL") from None
            part.finish()
        got = _verify(part, release)
        return cache.land(path, root, got, release.filename)


def ensure_installer(release: Release, root: HostRoot, *, session: requests.Session | None = None,
                     progress: Progress | None = None, options: DownloadOptions | None = None,
                     retrying: tenacity.Retrying | None = None,
                     image_dir: Path | None = baked.IMAGE_DRIVER_DIR) -> Path:
    """The verified cached `.run` (agent-visible path); downloads only on a cache miss.

    Order: the host cache, then the copy baked into the agent's image (`image_dir`,
    verified and copied into the cache), then the mirror or URL.
    """
    if release.sha256 is not None:
        hit = cache.lookup(root, release.sha256, release.filename)
        if hit is not None:
            log.info("installer_cached", path=str(hit), sha256=release.sha256, changed=False)
            return hit
        if image_dir is not None and (hit := baked.adopt(release, root, image_dir)):
            return hit
    opts = options or DownloadOptions()
    directory = cache.cache_dir(root, create=True)
    cache.sweep_stale_parts(directory)
    if release.size is not None:
        cache.check_space(directory, release.size)
    meter = Meter(release.shown_url, every=opts.progress_every,
                  progress=progress if progress is not None else tty_progress())
    log.info("download_started", url=release.shown_url, sha256=release.sha256, size=release.size)
    own = session is None
    session = session or new_session()
    try:
        path = _transfer(session, release, root, opts, retrying or RETRY, meter)
    finally:
        if own:
            with contextlib.suppress(Exception):
                session.close()
    seconds = meter.seconds()
    size = path.stat().st_size
    log.info("installer_downloaded", path=str(path), bytes=size, received=meter.received,
             seconds=round(seconds, 3), rate_bytes_per_second=round(size / seconds, 1)
             if seconds > 0 else 0.0, changed=True)
    return path

