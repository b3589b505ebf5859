"""Failures end to end, through a real `stream-app worker` on a real broker: messages of any size end in
the dead-letter topic, a write that fails for good stops the worker without acknowledging its input
(read again after the restart), and a stop is bounded in every state.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faults import ProduceBlackhole
from outputs import PARTITIONS, produce, read_until, scrape

from stream_app.cli import EXIT_WRITE_FAILED
from stream_app.devtools.broker import EmbeddedBroker, free_port
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.kafka.topics import create_topics
from stream_app.settings import Settings

STOP_BOUND_S = 10.0


def _settings(bootstrap: str, env: dict[str, str]) -> Settings:
    return Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})


def _txs(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    items = list(simulate(GeneratorConfig(seed=seed, n_customers=50, fraud_rate=0.02), days=1))[:n]
    return [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in items]


def _ready(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _timed_stop(worker: WorkerProcess, sig: int = signal.SIGTERM, state: str = "") -> float:
    """Seconds from the signal to the process's exit (killed at 30 s, which the caller's bound fails);
    printed, for the figures in docs/concepts/delivery.md (pytest -s)."""
    t0 = time.monotonic()
    worker.stop(sig, timeout_s=30.0)
    seconds = time.monotonic() - t0
    print(f"STOP state={state} signal={signal.Signals(sig).name} seconds={seconds:.2f}")
    return seconds


def test_messages_of_any_size_are_dead_lettered(kafka_bootstrap: str, app_env: dict[str, str],
                                                worker: WorkerProcess) -> None:
    """900 KB and 2 MB transactions and a 900 KB label (a card number at the cut) reach their dead-letter
    topics with a bounded prefix, size and digest; the metric counts them; the worker goes on scoring."""
    s = _settings(kafka_bootstrap, app_env)
    pan = b"4111111111111111"
    cut = s.dlq_original_max_bytes - 8  # the number straddles the end of the kept prefix
    big_tx = b'{"tx_id": "t-big", "pad": "' + b"x" * (cut - 27) + pan + b"y" * 900_000 + b'"}'
    huge_tx = b'{"tx_id": "t-huge", "pad": "' + b"z" * 2_000_000 + b'"}'
    big_label = b'{"tx_id": "t-big", "label": "fraud", "pad": "' + b"w" * 900_000 + b'"}'
    valid = _txs(20, seed=5)
    asyncio.run(produce_large(kafka_bootstrap, s.transactions_topic, [(b"card_1", big_tx), (None, huge_tx), *valid]))
    asyncio.run(produce_large(kafka_bootstrap, s.labels_topic, [(b"card_1", big_label)]))

    out = asyncio.run(read_until(
        kafka_bootstrap, [s.dlq_topic, s.labels_dlq_topic, s.scores_topic], PARTITIONS,
        lambda o: len(o.of(s.dlq_topic)) >= 2 and o.of(s.labels_dlq_topic) and len(o.of(s.scores_topic)) >= 20,
        timeout_s=90))
    dlq = sorted(out.of(s.dlq_topic), key=lambda r: r["original_size"])
    assert [r["reason"] for r in dlq] == ["message_too_large"] * 2
    assert [r["original_size"] for r in dlq] == [len(big_tx), len(huge_tx)]
    assert all(r["original_truncated"] for r in dlq)
    kept = base64.b64decode(dlq[0]["original_b64"])
    assert len(kept) == s.dlq_original_max_bytes and kept.startswith(b'{"tx_id": "t-big"')
    assert b"4111" not in kept[-16:] and pan[:12] not in kept, "the card number at the cut is masked, not cut"
    assert dlq[1]["original_sha256"] == hashlib.sha256(huge_tx).hexdigest()  # no card number: digest of the bytes
    (label,) = out.of(s.labels_dlq_topic)
    assert (label["reason"], label["original_size"]) == ("message_too_large", len(big_label))
    assert len(out.of(s.scores_topic)) == 20, "valid events after the large ones are scored"

    metrics = scrape(worker.web_port)
    name = "stream_app_events_dead_lettered_total"
    assert metrics[(name, (("reason", "message_too_large"), ("topic", s.dlq_topic)))] == 2
    assert metrics[(name, (("reason", "message_too_large"), ("topic", s.labels_dlq_topic)))] == 1
    assert _ready(worker.web_port)[0] == 200, _ready(worker.web_port)
    assert _timed_stop(worker, state="after_large_messages") < STOP_BOUND_S
    assert worker.process is not None and worker.process.returncode == 0


async def produce_large(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    """Like `produce`, with a request limit that lets messages of several MB through."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8_000_000)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def test_failed_write_stops_the_worker_unacknowledged(tmp_path: Path) -> None:
    """The broker never answers the worker's dead-letter write: the write fails for good, /ready turns
    503, the worker says why in one line and exits 70 within a bound; once writes go through again, a
    restarted worker dead-letters the same message: it was not acknowledged."""
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker, ProduceBlackhole(proxy_port, broker.port) as proxy:
        env = {**topic_env(f"it-{uuid.uuid4().hex[:8]}", PARTITIONS), "STREAM_APP_DELIVERY_TIMEOUT_S": "3"}
        s = _settings(broker.bootstrap, env)
        create_topics(s)
        proxy.drop = s.dlq_topic.encode()
        first = WorkerProcess(broker.bootstrap, tmp_path / "w1", env).start()
        try:
            first.wait_ready()
            asyncio.run(produce(broker.bootstrap, s.transactions_topic, [(b"card_1", b"not json at all")]))
            assert first.process is not None
            seen_503, counted, t0, failed_at = False, 0.0, time.monotonic(), 0.0
            while first.process.poll() is None and time.monotonic() < t0 + 30:
                try:
                    if not seen_503 and _ready(first.web_port)[0] == 503:  # 503 for ~1 s before the stop
                        seen_503, failed_at = True, time.monotonic()
                        counted = sum(v for (name, _), v in scrape(first.web_port).items()
                                      if name == "stream_app_events_dead_lettered_total")
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass  # the web server is already gone
                time.sleep(0.05)
            assert first.process.poll() == EXIT_WRITE_FAILED, first.log()[-3000:]
            if seen_503:
                print(f"STOP state=after_failed_write signal=none seconds={time.monotonic() - failed_at:.2f}")
            assert time.monotonic() - t0 < 3 + STOP_BOUND_S + 5  # delivery timeout + stop + slack for a busy CI
        finally:
            first.stop()
        assert proxy.dropped > 0
        failures = [json.loads(line) for line in first.log().splitlines() if '"delivery.failed"' in line]
        assert len(failures) == 1 and failures[0]["level"] == "error"
        assert "STREAM_APP_DELIVERY_TIMEOUT_S" in failures[0]["hint"]
        assert seen_503, "readiness reported the failure while the worker stopped"
        assert counted == 0, "the metric counts what reached the dead-letter topic, not what was meant to"

        proxy.drop = None
        second = WorkerProcess(broker.bootstrap, tmp_path / "w2", env).start()
        try:
            second.wait_ready()
            out = asyncio.run(read_until(broker.bootstrap, [s.dlq_topic], PARTITIONS, lambda o: bool(o.of(s.dlq_topic)),
                                         timeout_s=60))
            (record,) = out.of(s.dlq_topic)
            assert record["reason"] == "invalid_json" and base64.b64decode(record["original_b64"]) == b"not json at all"
        finally:
            second.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_is_bounded_idle_and_under_load(kafka_bootstrap: str, app_env: dict[str, str], tmp_path: Path,
                                             sig: int) -> None:
    s = _settings(kafka_bootstrap, app_env)
    idle = WorkerProcess(kafka_bootstrap, tmp_path / "idle", app_env).start()
    idle.wait_ready()
    assert _timed_stop(idle, sig, "idle") < STOP_BOUND_S
    assert idle.process is not None and idle.process.returncode == 0

    busy = WorkerProcess(kafka_bootstrap, tmp_path / "busy", app_env).start()
    busy.wait_ready()
    asyncio.run(produce(kafka_bootstrap, s.transactions_topic, _txs(20_000, seed=8)))  # a backlog to chew on
    time.sleep(1.0)
    assert scrape(busy.web_port).get(("stream_app_events_scored_total", ()), 0) > 0, "it was busy scoring"
    assert _timed_stop(busy, sig, "under_load") < STOP_BOUND_S
    assert busy.process is not None and busy.process.returncode == 0, busy.log()[-2000:]
    # The outputs' own producer is flushed and stopped after the last batch is confirmed: every event whose
    # offset the stop committed has its score.
    committed, scored = asyncio.run(_committed_and_scored(kafka_bootstrap, s))
    assert committed, "the stop committed nothing"
    assert committed <= scored, f"{len(committed - scored)} committed events without a score"


async def _committed_and_scored(bootstrap: str, s: Settings) -> tuple[set[str], set[str]]:
    """The tx_ids of the input records below the group's committed offsets, and those of the score records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=s.app_id, enable_auto_commit=False,
                                fetch_max_wait_ms=20)
    await consumer.start()
    try:
        tps = [TopicPartition(s.transactions_topic, p) for p in range(PARTITIONS)]
        ends = {tp: await consumer.committed(tp) or 0 for tp in tps}
        scores = [TopicPartition(s.scores_topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps + scores)
        await consumer.seek_to_beginning(*tps, *scores)
        committed: set[str] = set()
        scored: set[str] = set()
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 3.0:  # Tansu's end offsets are wrong: read until idle
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if batches:
                idle_since = time.monotonic()
            for tp, messages in batches.items():
                for m in messages:
                    if tp in ends and m.offset < ends[tp]:
                        committed.add(orjson.loads(m.value)["tx_id"])
                    elif tp not in ends:
                        scored.add(m.key.decode())
        return committed, scored
    finally:
        await consumer.stop()


def test_stop_is_bounded_with_the_broker_gone(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:
        env = topic_env(f"it-{uuid.uuid4().hex[:8]}", PARTITIONS)
        create_topics(_settings(broker.bootstrap, env))
        worker = WorkerProcess(broker.bootstrap, tmp_path / "w", env).start()
        worker.wait_ready()
        asyncio.run(produce(broker.bootstrap, env["STREAM_APP_TRANSACTIONS_TOPIC"], _txs(500, seed=9)))
    time.sleep(2.0)  # the broker is gone; the worker notices
    try:
        assert worker.process is not None and worker.process.poll() is None
        assert _timed_stop(worker, state="broker_gone") < STOP_BOUND_S, worker.log()[-2000:]
    finally:
        worker.kill()


def test_dead_letter_records_are_json_of_bounded_size(kafka_bootstrap: str, app_env: dict[str, str],
                                                       worker: WorkerProcess) -> None:
    """A key of 1 MB cannot make the dead-letter message too large either: its own key becomes a digest."""
    s = _settings(kafka_bootstrap, app_env)
    asyncio.run(produce_large(kafka_bootstrap, s.transactions_topic, [(b"k" * 1_000_000, b"[1, 2")]))
    out = asyncio.run(read_until(kafka_bootstrap, [s.dlq_topic], PARTITIONS, lambda o: bool(o.of(s.dlq_topic)),
                                 timeout_s=60))
    (record,) = out.of(s.dlq_topic)
    (key,) = out.keys[s.dlq_topic]
    assert record["reason"] == "invalid_json" and record["key_size"] == 1_000_000
    assert key is not None and key.startswith(b"sha256:") and len(orjson.dumps(record)) < 10_000
