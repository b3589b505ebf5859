"""Produce a micro-batch's records as one batch per partition instead of one `send` per record.

Per record, `AIOKafkaProducer.send` costs a future, a partitioner call and an accumulator append, and
awaiting each delivery costs a task; at thousands of records per second that is more than scoring
them. `send_batch` takes a whole partition's records for one future. The partition is the producer's
own choice for the key (its partitioner), so keyed records land exactly where `send` would put them.

Faust tables get the same treatment (:class:`BatchedTable`): faust sends one changelog record per
key set, through its own buffer, a task and a `send` each, which cost more than the scoring itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from aiokafka import AIOKafkaProducer

from stream_app.kafka.compat import partition_for, store_dict, topic_partitions


class PartitionBatches:
    """Records collected for one micro-batch, grouped by (topic, partition); `send` submits them."""

    def __init__(self, producer: AIOKafkaProducer, partitions: dict[str, list[int]] | None = None) -> None:
        self.producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self._partitions = partitions if partitions is not None else {}
        self.records = 0

    def add(self, topic: str, key: bytes, value: bytes | None, partition_key: bytes | None = None, *,
            card: bool = False) -> None:
        """Queue a record, in the partition of ``partition_key`` (default: its key); the topic's partitions
        must be known (``partitions``, see `ensure_metadata`). ``card``: that key is a card's, whose
        partition is cached (it comes back with the card's next events)."""
        known = self._partitions.get(topic)
        if known is None:
            found = self.producer.client.cluster.partitions_for_topic(topic)
            if not found:
                raise LookupError(f"partitions of {topic} unknown: call ensure_metadata first")
            known = self._partitions[topic] = sorted(found)
        partition = partition_for(self.producer, key if partition_key is None else partition_key, known, card=card)
        builder = self._open.get((topic, partition))
        if builder is None:
            builder = self._open[(topic, partition)] = self.producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value) is None:  # full: start another
            self._full.append((topic, partition, builder))
            builder = self._open[(topic, partition)] = self.producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"record of {len(value or b'')} bytes does not fit an empty batch for {topic}")
        self.records += 1

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every batch to the producer; returns the delivery futures (one per batch)."""
        batches = self._full + [(t, p, b) for (t, p), b in self._open.items()]
        self._full, self._open, self.records = [], {}, 0
        return [await self.producer.send_batch(b, t, partition=p) for t, p, b in batches]


class BatchedTable(MutableMapping[bytes, bytes]):
    """A faust table (raw bytes keys and values) whose writes go into a micro-batch's changelog batches.

    A write changes the table's store at once (reads see it) and adds its changelog record (a
    tombstone for a delete) to ``batches``, partitioned by the producer's partitioner like faust's
    ``use_partitioner=True`` (over ``partition_key(key)`` when given: a composite key partitioned by one
    part; the worker's tables are all partitioned by card, so that partition is cached); the caller sends
    the batches and awaits them before acknowledging the input, which is also what makes "state before
    outputs" a plain ordering of two awaits."""

    def __init__(self, table: Any, batches: PartitionBatches,
                 partition_key: Callable[[bytes], bytes] | None = None) -> None:
        self.store = store_dict(table)
        self.topic = table.changelog_topic.get_topic_name()
        self.batches = batches
        self.partition_key = partition_key

    def __getitem__(self, key: bytes) -> bytes:
        return self.store[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.store[key] = value
        self.batches.add(self.topic, key, value, self.partition_key(key) if self.partition_key else None, card=True)

    def __delitem__(self, key: bytes) -> None:
        del self.store[key]
        self.batches.add(self.topic, key, None, self.partition_key(key) if self.partition_key else None, card=True)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)


async def ensure_metadata(producer: AIOKafkaProducer, *topics: str) -> dict[str, list[int]]:
    """Each topic's partitions, fetched once before the first batch (pass them to `PartitionBatches`:
    the client's cached metadata may later be refreshed for a subset of topics)."""
    return {topic: sorted(await topic_partitions(producer, topic)) for topic in topics}


async def delivered(futures: Awaitable[list[asyncio.Future[Any]]]) -> None:
    """Wait until the broker has every batch (raises the first delivery error)."""
    await asyncio.gather(*await futures)
