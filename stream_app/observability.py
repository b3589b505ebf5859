"""Structured JSON logs (structlog): event names and ids, never card numbers or amounts per event."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR}


class CurrentStderr:
    """The stderr of the moment logging was configured, or the current one once that was closed.

    Loggers are cached on first use, so one bound to a stream that was later replaced and closed (as
    pytest's capture does between tests that run the CLI in-process) would fail; the stream of the
    moment is kept otherwise, so a faust worker, which redirects ``sys.stderr`` into its own log
    format after we configured logging, still writes our JSON lines as they are."""

    def __init__(self) -> None:
        self.stream = sys.stderr

    def write(self, text: str) -> int:
        stream = sys.stderr if self.stream.closed else self.stream
        return stream.write(text)

    def flush(self) -> None:
        (sys.stderr if self.stream.closed else self.stream).flush()


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr; stdout stays free for what a command prints for people."""
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
