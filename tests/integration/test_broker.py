"""Broker adapters against a real broker: embedded Tansu lifecycle, its end-offset bug, the fix.

Without a Docker engine ``kafka_bootstrap`` is Tansu; with one it is Apache Kafka, where the
corrected highwaters must equal plain ``end_offsets``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.transport import by_url

import stream_app.kafka
from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.children import alive
from stream_app.kafka.compat import Transport
from stream_app.kafka.topics import TopicSpec, ensure_topics
from stream_app.kafka.transport import broker_url, verified_highwaters

BATCH_RECORDS = 150
TABLE_APP = Path(__file__).with_name("table_app.py")
REPO_ROOT = Path(stream_app.kafka.__file__).resolve().parents[2]


async def _round_trip(bootstrap: str, count: int) -> list[bytes]:
    topic = f"rt-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, partitions=1)], timeout_s=10)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        values: list[bytes] = []
        while len(values) < count:
            batches = await consumer.getmany(tp, timeout_ms=1000)
            values += [record.value for record in batches.get(tp, [])]
        return values
    finally:
        await consumer.stop()


@pytest.mark.timeout(60)
def test_embedded_broker_round_trip_and_clean_stop() -> None:
    started = time.monotonic()
    with EmbeddedBroker() as broker:
        start_s = time.monotonic() - started
        pid = broker.pid
        assert broker.bootstrap.startswith("127.0.0.1:")
        values = asyncio.run(asyncio.wait_for(_round_trip(broker.bootstrap, 300), 30))
        assert values == [str(i).encode() for i in range(300)]
    assert not alive(pid)
    broker.stop()  # idempotent
    assert start_s < 10
    assert broker.log_path.read_text().startswith("tansu broker")


async def _send_one_batch(bootstrap: str, topic: str, partition: int, count: int) -> None:
    """Send ``count`` records as ONE producer batch: the case Tansu's ListOffsets gets wrong."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(count):
            assert batch.append(key=None, value=str(i).encode(), timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


async def _end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


@pytest.mark.timeout(60)
def test_end_offsets_of_a_multi_record_batch(
    kafka_bootstrap: str, broker_is_tansu: bool, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    tp = TopicPartition(topic, 0)

    async def scenario() -> int:
        await _send_one_batch(kafka_bootstrap, topic, 0, BATCH_RECORDS)
        return (await _end_offsets(kafka_bootstrap, [tp]))[tp]

    end = asyncio.run(asyncio.wait_for(scenario(), 30))
    if broker_is_tansu:
        assert end < BATCH_RECORDS, "Tansu's ListOffsets bug is gone: revisit faust_transport"
    else:
        assert end == BATCH_RECORDS


@pytest.mark.timeout(60)
def test_verified_highwaters_match_the_log(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=3)
    batched, empty, single = (TopicPartition(topic, p) for p in range(3))

    async def scenario() -> dict[Any, int]:
        await _send_one_batch(kafka_bootstrap, topic, batched.partition, BATCH_RECORDS)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, str(i).encode(), partition=single.partition)
        finally:
            await producer.stop()
        return await verified_highwaters(kafka_bootstrap, [batched, empty, single], timeout_s=15)

    highwaters = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert highwaters == {batched: BATCH_RECORDS, empty: 0, single: 5}


@pytest.mark.timeout(10)
def test_broker_url_selects_the_transport() -> None:
    assert broker_url("h:1,h:2", fetch_verified_offsets=True) == "tansu://h:1;tansu://h:2"
    assert by_url(broker_url("h:1", fetch_verified_offsets=True)) is Transport
    assert by_url(broker_url("h:1", fetch_verified_offsets=False)) is not Transport


@contextmanager
def _faust_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``table_app.py`` in its own process group; whatever happens, nothing survives."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(TABLE_APP)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_result(proc: subprocess.Popen[bytes], result: Path, log: Path, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not result.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"faust worker gave no result (exit {proc.returncode}):\n{tail}")
        time.sleep(0.1)
    return json.loads(result.read_text())


@pytest.mark.timeout(120)
def test_faust_table_recovers_last_values(
    kafka_bootstrap: str,
    broker_is_tansu: bool,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """A table rebuilt from its changelog by a new worker equals what the first one wrote.

    The first worker's changelog is written with default producer settings, so records go out
    in multi-record batches; on Tansu that alone made stock Faust lose the last updates.
    """
    started = time.monotonic()
    bootstrap = kafka_bootstrap
    keys, rounds = 10, 20
    expected = {f"k{k}": (rounds - 1) * 100 + k for k in range(keys)}
    input_topic = topic_factory(partitions=2)
    app_id = f"recovery-{uuid.uuid4().hex[:8]}"

    async def produce_updates() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for r in range(rounds):
                for k in range(keys):
                    await producer.send(input_topic, str(r * 100 + k).encode(), key=f"k{k}".encode())
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(asyncio.wait_for(produce_updates(), 20))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "APP_ID": app_id,
        "BOOTSTRAP": bootstrap,
        "INPUT_TOPIC": input_topic,
        "EXPECTED": json.dumps(expected),
    }

    def phase(name: str) -> tuple[dict[str, str], Path, Path]:
        (tmp_path / name).mkdir()
        result, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
        return {**env, "PHASE": name, "DATA_DIR": str(tmp_path / name), "RESULT_FILE": str(result)}, result, log

    write_env, write_result, write_log = phase("write")
    with _faust_worker(write_env, write_log) as writer:
        assert _wait_result(writer, write_result, write_log, 60)["applied"] >= keys * rounds
        writer.send_signal(signal.SIGTERM)  # graceful: flushes the producer, commits offsets
        assert writer.wait(30) == 0
    written_s = time.monotonic() - started

    changelog = [TopicPartition(f"{app_id}-latest-changelog", p) for p in range(2)]
    ends = asyncio.run(asyncio.wait_for(_end_offsets(bootstrap, changelog), 20))
    verified = asyncio.run(verified_highwaters(bootstrap, changelog, timeout_s=20))
    assert sum(verified.values()) >= keys * rounds
    if broker_is_tansu:
        assert any(ends[tp] < verified[tp] for tp in changelog), "scenario misses the Tansu bug"
    else:
        assert ends == verified

    recover_env, recover_result, recover_log = phase("recover")
    with _faust_worker(recover_env, recover_log) as reader:
        recovered = _wait_result(reader, recover_result, recover_log, 60)
    assert recovered == {"table": expected, "applied": 0}
    print(f"write phase {written_s:.1f}s, total {time.monotonic() - started:.1f}s")
