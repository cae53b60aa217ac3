"""The download's retry policy: Retry-After honoured and capped, only transient errors retried."""

from datetime import UTC, datetime

import pytest
import tenacity

from agent.errors import DownloadError
from agent.install.retry import RETRY, TooSlow, TransientError, WaitRetryAfter, parse_retry_after


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 3 ", 3.0), (None, None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0)])
def test_parse_retry_after(value, seconds):
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds


def failed_with(exc):
    state = tenacity.RetryCallState(RETRY, None, (), {})
    state.set_exception((type(exc), exc, None))
    return state


def test_the_servers_retry_after_is_waited_up_to_five_minutes():
    wait = WaitRetryAfter(tenacity.wait_fixed(7))
    assert wait(failed_with(TransientError("503", retry_after=12))) == 12
    assert wait(failed_with(TransientError("429", retry_after=86400))) == 300
    assert wait(failed_with(TransientError("connection reset"))) == 7


@pytest.mark.parametrize(("exc", "again"), [
    (TransientError("503"), True), (TooSlow("drip"), True), (DownloadError("404"), False)])
def test_only_transient_failures_are_retried(exc, again):
    assert RETRY.retry(failed_with(exc)) is again
