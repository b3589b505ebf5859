"""Reading the service's output topics back, for assertions: a consumer without group, from the start."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

PARTITIONS = 4  # of every topic the tests' workers use


@dataclass
class Outputs:
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    keys: dict[str, list[bytes | None]] = field(default_factory=dict)

    def of(self, topic: str) -> list[dict[str, Any]]:
        return self.records.get(topic, [])


async def read_until(bootstrap: str, topics: list[str], partitions: int, done: Callable[[Outputs], bool],
                     timeout_s: float) -> Outputs:
    """Read every record of ``topics`` until ``done(outputs)`` holds or ``timeout_s`` passes."""
    out = Outputs()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, messages in batches.items():
                for m in messages:
                    out.records.setdefault(tp.topic, []).append(orjson.loads(m.value))
                    out.keys.setdefault(tp.topic, []).append(m.key)
            if done(out):
                break
        return out
    finally:
        await consumer.stop()


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                max_request_size=1_048_576)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A worker's GET /metrics as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
