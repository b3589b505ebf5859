"""Stdlib log records (faust's, mode's, aiokafka's, ``warnings``) come out as one JSON line each, like ours."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from stream_app.worker.logs import json_stdlib_logging

ROUTED = ("", "faust", "mode", "aiokafka")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The stream the handler writes to; the logging state the function changes is restored afterwards."""
    handlers, levels = logging.root.handlers[:], {name: logging.getLogger(name).level for name in ROUTED}
    yield io.StringIO()
    logging.root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_library_record_with_a_traceback_is_one_json_line(stream: io.StringIO) -> None:
    json_stdlib_logging(logging.WARNING, stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aiokafka.consumer.fetcher").exception("Unexpected error in fetcher for %s", "tx-0")

    assert len(stream.getvalue().splitlines()) == 1, stream.getvalue()
    [line] = lines(stream)
    assert line["event"] == "Unexpected error in fetcher for tx-0"
    assert line["level"] == "error"
    assert line["logger"] == "aiokafka.consumer.fetcher"
    assert isinstance(line["timestamp"], str) and line["timestamp"].endswith("Z")
    exception = line["exception"]
    assert isinstance(exception, str)
    assert exception.startswith("Traceback") and exception.rstrip().endswith("ValueError: boom")


def test_levels_below_the_requested_one_are_dropped_also_for_loggers_left_at_debug(stream: io.StringIO) -> None:
    for name in ROUTED:
        logging.getLogger(name).setLevel(logging.DEBUG)  # what mode's set-up left behind
    json_stdlib_logging(logging.WARNING, stream)
    logging.getLogger("faust.transport.producer").debug("sent %d", 1)
    logging.getLogger("mode.worker").info("[^Worker]: Starting...")
    logging.getLogger("faust.transport.drivers.aiokafka").warning("Stream has gone quiet")

    assert [(line["event"], line["level"], line["logger"]) for line in lines(stream)] == [
        ("Stream has gone quiet", "warning", "faust.transport.drivers.aiokafka")]


def test_python_warnings_become_json_lines(stream: io.StringIO) -> None:
    json_stdlib_logging(logging.WARNING, stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Unclosed AIOKafkaProducer", ResourceWarning, stacklevel=1)

    [line] = lines(stream)
    assert line["logger"] == "py.warnings" and line["level"] == "warning"
    assert "ResourceWarning: Unclosed AIOKafkaProducer" in str(line["event"])
