"""A dead-letter record the broker refuses as too large is published again without the original's bytes,
and counted once; any other refusal is not swallowed (the agent stops: see tests/integration/test_failures.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError
from faust.exceptions import ProducerSendError
from prometheus_client import CollectorRegistry

from stream_app.domain.events import NotJson
from stream_app.domain.records import Source
from stream_app.settings import Settings
from stream_app.worker.topology import StreamApp

SOURCE = Source("transactions", 1, 7, 0)


def _app(tmp_path: Path, refuse: type[Exception], times: int) -> tuple[StreamApp, list[dict[str, Any]]]:
    app = StreamApp(Settings(bootstrap_servers="127.0.0.1:1", data_dir=str(tmp_path)), CollectorRegistry())
    sent: list[dict[str, Any]] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:  # faust's producer, as it fails
        if len(sent) < times:
            sent.append({})
            try:
                raise refuse()
            except Exception as exc:
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        sent.append(orjson.loads(value))

    app.outputs.send = send  # type: ignore[method-assign,assignment]
    return app, sent


def _count(app: StreamApp) -> float:
    value = app.metrics.registry.get_sample_value("stream_app_events_dead_lettered_total",
                                                  {"topic": "transactions.dlq", "reason": "invalid_json"})
    return value or 0.0


def test_refused_as_too_large_goes_out_minimal(tmp_path: Path) -> None:
    app, sent = _app(tmp_path, MessageSizeTooLargeError, times=1)
    asyncio.run(app.outputs.dead_letter("transactions.dlq", b"x" * 5000, NotJson("not valid JSON"), SOURCE, b"k"))
    assert len(sent) == 2 and sent[1]["original_b64"] == "" and sent[1]["original_size"] == 5000
    assert _count(app) == 1


def test_other_refusals_are_raised_and_not_counted(tmp_path: Path) -> None:
    app, _ = _app(tmp_path, TopicAuthorizationFailedError, times=1)
    with pytest.raises(ProducerSendError):
        asyncio.run(app.outputs.dead_letter("transactions.dlq", b"x", NotJson("not valid JSON"), SOURCE, None))
    assert _count(app) == 0
