"""The download's one retry policy: which failures earn another attempt, and the wait."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

import structlog
import tenacity

from agent.errors import DownloadError

log = structlog.get_logger(__name__)

# DownloadOptions' default; each download swaps RETRY's stop for its own attempts + deadline.
ATTEMPTS = 6
_MAX_RETRY_AFTER = 300.0  # a server asking for more than 5 minutes gets our own backoff cap


class TransientError(DownloadError):
    """Worth another attempt: connection trouble, 5xx, 408, 429."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooSlow(TransientError):
    """An attempt below the minimum rate: it costs an attempt (no free resume)."""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


class WaitRetryAfter(tenacity.wait.wait_base):
    """The server's Retry-After when it sent one, else the fallback backoff."""

    def __init__(self, fallback: tenacity.wait.wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, _MAX_RETRY_AFTER)
        return self.fallback(retry_state)


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("download_retry", attempt=state.attempt_number, wait_seconds=round(wait, 2),
                error=str(exc))


# The one retry policy. Tests shorten it with RETRY.copy(wait=wait_none()) or a fake sleep.
RETRY = tenacity.Retrying(
    retry=tenacity.retry_if_exception_type(TransientError),
    wait=WaitRetryAfter(tenacity.wait_random_exponential(multiplier=1, max=60)),
    stop=tenacity.stop_after_attempt(ATTEMPTS),
    before_sleep=_log_retry,
    reraise=True,
)
