"""Structured JSON logs (structlog): event names and ids, never card numbers or amounts per event."""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR}


_TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


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
            _TIMESTAMP,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def json_stdlib_logging(level: int, stream: IO[str]) -> None:
    """Write every stdlib log record (faust, mode, aiokafka, asyncio, ``warnings``) to ``stream`` as one
    JSON line, like our own events: the message is the event, plus level, logger, timestamp and, for a
    traceback, an ``exception`` field (a multi-line text would break line-by-line log shippers).

    The handler replaces the root logger's (mode's colour text format). ``level`` goes on the root and
    on faust's, mode's and aiokafka's loggers, which mode's set-up leaves at DEBUG whatever was asked:
    every produced record then paid for a formatted debug line (~6 % of a worker's time)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level, _TIMESTAMP],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]))
    logging.root.handlers[:] = [handler]
    for name in ("", "faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
