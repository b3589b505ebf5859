"""Produce a micro-batch's records as one batch per partition instead of one `send` per record.

Per record, `AIOKafkaProducer.send` costs a future, a partitioner call and an accumulator append, and
awaiting each delivery costs a task; at thousands of records per second that is more than scoring
them. `send_batch` takes a whole partition's records for one future. The partition is the producer's
own choice for the key (its partitioner), so keyed records land exactly where `send` would put them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer


class PartitionBatches:
    """Records collected for one micro-batch, grouped by (topic, partition); `send` submits them."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self._partitions: dict[str, tuple[list[int], list[int]]] = {}
        self.records = 0

    def add(self, topic: str, key: bytes, value: bytes) -> None:
        """Queue a record; the topic's metadata must be known (see `ensure_metadata`)."""
        known = self._partitions.get(topic)
        if known is None:
            metadata = self.producer.client.cluster
            known = self._partitions[topic] = (sorted(metadata.partitions_for_topic(topic)),
                                               sorted(metadata.available_partitions_for_topic(topic)))
        partition = self.producer._partitioner(key, *known)
        builder = self._open.get((topic, partition))
        if builder is None:
            builder = self._open[(topic, partition)] = self.producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value) is None:  # full: start another
            self._full.append((topic, partition, builder))
            builder = self._open[(topic, partition)] = self.producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"record of {len(value)} bytes does not fit an empty batch for {topic}")
        self.records += 1

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every batch to the producer; returns the delivery futures (one per batch)."""
        batches = self._full + [(t, p, b) for (t, p), b in self._open.items()]
        self._full, self._open, self.records = [], {}, 0
        return [await self.producer.send_batch(b, t, partition=p) for t, p, b in batches]


async def ensure_metadata(producer: AIOKafkaProducer, *topics: str) -> None:
    """Partitioning needs each topic's partition count; fetch it once, before the first batch."""
    for topic in topics:
        await producer.client._wait_on_metadata(topic)


async def delivered(futures: Awaitable[list[asyncio.Future[Any]]]) -> None:
    """Wait until the broker has every batch (raises the first delivery error)."""
    await asyncio.gather(*await futures)
