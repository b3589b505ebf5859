"""`stream-app door` without Kafka: its card replica, and its pages on aiohttp (its followers not started)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.features import CardState, new_state
from stream_app.door.cards import CardReplica
from stream_app.door.server import DoorProcess, create_app
from stream_app.settings import Settings
from stream_app.worker import http
from stream_app.worker.delivery import encode_card

TOKEN = "door-token-0123456789"


def test_card_replica_keeps_the_last_value_and_forgets_on_a_tombstone() -> None:
    cards = CardReplica.__new__(CardReplica)
    cards.states = {}
    cards.apply(b"c1", b"v1")
    cards.apply(b"c2", b"v2")
    cards.apply(b"c1", b"v3")
    cards.apply(None, b"no key")  # never written by a worker: ignored
    cards.apply(b"c2", None)
    cards.apply(b"c4", None)  # a tombstone for a card never seen
    assert cards.states == {b"c1": b"v3"}


def _pages(settings: Settings, requests: list[tuple[str, str, bytes | None, dict[str, str]]],
           prepare: Any = None) -> list[tuple[int, Any]]:
    """Each (method, path, body, headers) against the door's aiohttp app, its followers not started."""
    process = DoorProcess(settings)
    process.jobs = list  # type: ignore[method-assign]  # no Kafka here: nothing to follow
    if prepare is not None:
        prepare(process)

    async def run() -> list[tuple[int, Any]]:
        out = []
        async with TestClient(TestServer(create_app(process))) as client:
            for method, path, body, headers in requests:
                r = await client.request(method, path, data=body, headers=headers)
                raw = await r.read()
                out.append((r.status, orjson.loads(raw) if r.content_type == "application/json" else raw))
        return out

    return asyncio.run(run())


def test_pages_answer_from_the_replicas_and_say_not_ready_before_they_caught_up(tmp_path: Any) -> None:
    item = next(iter(simulate(GeneratorConfig(seed=3, n_customers=20), days=1)))
    tx = item.tx
    state = CardState.from_dict({**new_state().as_dict(), "last_ts": tx.ts_ms - 60_000, "last_country": tx.country,
                                 "first_ts": tx.ts_ms - 86_400_000, "recent": [[tx.ts_ms - 60_000, 50.0]]})

    def prepare(process: DoorProcess) -> None:
        process.cards.apply(tx.card_id.encode(), encode_card(state, None))

    settings = Settings.from_env({"STREAM_APP_DATA_DIR": str(tmp_path)})
    answers = _pages(settings, [
        ("GET", "/health", None, {}),
        ("GET", "/ready", None, {}),
        ("POST", "/score", tx.to_bytes(), {}),
        ("POST", "/score", orjson.dumps([tx.to_json_dict(), dataclasses.replace(tx, tx_id="other").to_json_dict()]),
         {}),
        ("POST", "/score", b"{", {}),
        ("GET", "/score", None, {}),
        ("GET", "/models", None, {}),
        ("GET", "/metrics", None, {}),
        ("GET", "/openapi.json", None, {}),
    ], prepare)
    health, ready, one, many, bad, get_score, models, metrics, openapi = answers
    assert health == (200, http.ALIVE)
    assert ready[0] == 503 and not ready[1]["ready"]
    assert not ready[1]["checks"]["cards_caught_up"] and ready[1]["checks"]["models_loaded"]
    assert one[0] == 200 and one[1]["status"] == "scored"
    # The card's state came from the replica: one transaction in its last hour, the previous one a minute ago.
    assert one[1]["features"]["count_1h"] == 1.0 and one[1]["features"]["seconds_since_prev"] == 60.0
    assert [r["status"] for r in many[1]["results"]] == ["scored", "scored"]
    assert many[1]["results"][1]["features"]["count_1h"] == 2.0  # the list in sequence, as the stream would
    assert bad[0] == 400 and bad[1]["error"] == "invalid_json"
    assert get_score == (405, http.METHOD_NOT_ALLOWED)
    assert models[0] == 200 and models[1]["versions"]["onnx"] == models[1]["onnx"]["version"]
    assert metrics[0] == 200 and b"stream_app_ready 0.0" in metrics[1]
    # The door's own registry: its requests counted by status, no stream counters that would read 0 for ever.
    assert b'stream_app_score_requests_total{status="200"} 2.0' in metrics[1]
    assert b'stream_app_score_requests_total{status="400"} 1.0' in metrics[1]
    assert b"stream_app_score_request_seconds_count 3.0" in metrics[1]
    assert b"stream_app_card_replica_lag_seconds" in metrics[1] and b"stream_app_events_consumed" not in metrics[1]
    assert openapi[0] == 200 and "/score" in openapi[1]["paths"]


@pytest.mark.parametrize("header, status", [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                            ({"Authorization": f"Bearer {TOKEN}"}, 200)])
def test_the_door_enforces_the_token_but_not_on_probes(header: dict[str, str], status: int, tmp_path: Any) -> None:
    settings = Settings.from_env({"STREAM_APP_HTTP_TOKEN": TOKEN, "STREAM_APP_DATA_DIR": str(tmp_path)})
    (models, _), (health, _), (ready, _) = _pages(settings, [("GET", "/models", None, header),
                                                             ("GET", "/health", None, {}),
                                                             ("GET", "/ready", None, {})])
    assert models == status and health == 200 and ready == 503


def test_a_failed_follower_stops_the_door_with_its_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A follower that raises would leave the door answering from a replica that no longer moves: the door
    signals itself to stop (exit 1); a follower cancelled at shutdown is no failure."""
    import os
    import signal

    process = DoorProcess(Settings.from_env({"STREAM_APP_DATA_DIR": str(tmp_path)}))
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))

    async def broken() -> None:
        raise RuntimeError("topic gone")

    async def run() -> None:
        failing = asyncio.create_task(broken())
        cancelled = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        cancelled.cancel()
        for task in (failing, cancelled):
            try:
                await task
            except (RuntimeError, asyncio.CancelledError):
                pass
        process.failed(cancelled)
        assert kills == [] and process.failure is None
        process.failed(failing)
        process.failed(failing)  # once only

    asyncio.run(run())
    assert kills == [(os.getpid(), signal.SIGTERM)]
    assert process.failure == "RuntimeError('topic gone')"
