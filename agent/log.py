"""structlog, configured once: JSON lines for Kubernetes, a console renderer for people."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, WrappedLogger

from agent.redact import redact_text

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def wants_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "auto":
        return not stream.isatty()
    return fmt == "json"


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # Looked up at each log call, not bound once: a replaced sys.stderr (pytest's
    # capture, a re-opened stream) must not leave loggers writing to a closed file.
    return structlog.PrintLogger(sys.stderr)


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_text(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def redact_event(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Belt and braces: no URL in any log line keeps its userinfo or query (agent/redact.py),
    nested values and rendered tracebacks included."""
    return {key: _redacted(value) for key, value in event.items()}


# Tracebacks of bugs keep their frames but not their locals: a frame's locals hold the
# settings (GRID_AGENT_DRIVER_URL with its credentials), which no log line may carry.
_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Logs go to stderr so stdout stays clean for `--json` output."""
    factory = structlog.PrintLoggerFactory(file=stream) if stream else _stderr_logger
    stream = stream or sys.stderr
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if wants_json(fmt, stream):
        processors += [_TRACEBACKS, redact_event, structlog.processors.JSONRenderer()]
    else:
        processors += [redact_event, structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
