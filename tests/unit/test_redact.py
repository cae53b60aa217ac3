"""URLs never show their userinfo or query: one function, used by logs, errors and plans."""

import io
import json

import pytest
import structlog

from agent import log as agent_log
from agent.catalog import Release
from agent.redact import redact_text, redact_url

SECRET_URL = "https://agent:hunter2@mirror.example:8443/d/x.run?sv=2024&sig=SASSECRET#frag"


@pytest.mark.parametrize(("url", "shown"), [
    (SECRET_URL, "https://***@mirror.example:8443/d/x.run?***"),
    ("https://h/x.run", "https://h/x.run"),
    ("http://user@h/x", "http://***@h/x"),
    ("https://h/x?sig=a", "https://h/x?***"),
    ("not a url?sig=a", "not a url?***"),
    ("https://[::1/x", "***"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_removes_secret_parts_even_outside_a_full_url():
    text = (f"connection to {SECRET_URL} failed: Max retries exceeded with url: "
            "/d/x.run?sv=2024&sig=SASSECRET (Caused by agent:hunter2)")
    out = redact_text(text, SECRET_URL)
    assert "SASSECRET" not in out and "hunter2" not in out
    assert "mirror.example:8443/d/x.run" in out


def test_release_shows_a_redacted_url():
    release = Release("1.0", SECRET_URL, None, None, "auto")
    assert release.shown_url == "https://***@mirror.example:8443/d/x.run?***"
    assert release.filename == "x.run"


def test_every_log_line_is_redacted():
    stream = io.StringIO()
    agent_log.configure("json", "debug", stream=stream)
    try:
        structlog.get_logger("t").info("anything", url=SECRET_URL, nested=f"see {SECRET_URL}")
    finally:
        agent_log.configure()
    line = json.loads(stream.getvalue())
    assert "hunter2" not in stream.getvalue() and "SASSECRET" not in stream.getvalue()
    assert line["url"] == "https://***@mirror.example:8443/d/x.run?***"


def test_a_bugs_traceback_carries_no_locals_and_no_secret():
    stream = io.StringIO()
    agent_log.configure("json", "debug", stream=stream)
    try:
        url = SECRET_URL  # a local of the failing frame, as settings are in the pipeline's
        try:
            raise RuntimeError(f"boom with {url}")
        except RuntimeError:
            structlog.get_logger("t").exception("internal_error")
    finally:
        agent_log.configure()
    text = stream.getvalue()
    assert "hunter2" not in text and "SASSECRET" not in text, text
    line = json.loads(text)
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert all("locals" not in frame or not frame["locals"]
               for frame in line["exception"][0]["frames"])


def test_console_logs_are_redacted_too():
    stream = io.StringIO()
    agent_log.configure("console", "debug", stream=stream)
    try:
        structlog.get_logger("t").info("x", urls=[SECRET_URL], nested={"u": SECRET_URL})
    finally:
        agent_log.configure()
    assert "hunter2" not in stream.getvalue() and "SASSECRET" not in stream.getvalue()
