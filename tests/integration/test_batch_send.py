"""Batched produce puts each keyed record in the partition the producer's own `send` would choose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.kafka.batch_send import PartitionBatches, delivered, ensure_metadata


async def _produce_both_ways(bootstrap: str, batched: str, single: str, keys: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await ensure_metadata(producer, batched, single)
        batches = PartitionBatches(producer)
        for i, key in enumerate(keys):
            batches.add(batched, key, b"x" * (i % 700))  # some batches fill up and roll over
        await delivered(batches.send())
        await asyncio.gather(*[await producer.send(single, b"x", key=key) for key in keys])
    finally:
        await producer.stop()


async def _partition_of_keys(bootstrap: str, topic: str, n: int) -> dict[bytes, set[int]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    seen: dict[bytes, set[int]] = {}
    try:
        while sum(len(v) for v in seen.values()) < n:
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                for m in messages:
                    seen.setdefault(m.key, set()).add(m.partition)
        return seen
    finally:
        await consumer.stop()


def test_batched_records_land_where_send_puts_them(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    batched, single = topic_factory(partitions=4), topic_factory(partitions=4)
    keys = [f"card-{i}".encode() for i in range(300)]
    asyncio.run(_produce_both_ways(kafka_bootstrap, batched, single, keys))
    got = asyncio.run(asyncio.wait_for(_partition_of_keys(kafka_bootstrap, batched, len(keys)), 60))
    want = asyncio.run(asyncio.wait_for(_partition_of_keys(kafka_bootstrap, single, len(keys)), 60))
    assert set(got) == set(keys)
    assert got == want
    assert len({p for parts in got.values() for p in parts}) == 4
