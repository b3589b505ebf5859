"""Read-your-own-outputs: which of some keys were written to a partition since a moment.

Used after a takeover (see docs/concepts/delivery.md): a worker that was killed after the card
state of a micro-batch reached the broker, but before its score and alert records did, leaves events
whose redelivery the state recognises while their outputs may be missing. Without transactions only the
output topics themselves can tell; this reads the tail of the partitions concerned, back to ``since_ms``.

Never relies on ListOffsets (wrong on the embedded broker): the end of a partition is the high watermark
of a fetch, and the tail is read backwards in doubling steps until a record older than ``since_ms``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.domain.partitioner import kafka_partition


async def written_since(bootstrap: str, wanted: Mapping[str, set[bytes]], since_ms: int, *,
                        timeout_s: float = 30.0, **client_kwargs: Any) -> dict[str, dict[bytes, list[bytes]]]:
    """Per topic, the values written under each wanted key by records stamped at or after ``since_ms``
    (records a little older are read too: callers give a margin). Only the partition each key hashes to
    (Kafka's default partitioner) is read, backwards from its end."""
    found: dict[str, dict[bytes, list[bytes]]] = {topic: {} for topic in wanted}
    if not any(wanted.values()):
        return found
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50, **client_kwargs)
    async with asyncio.timeout(timeout_s):
        await consumer.start()
        try:
            await consumer.topics()  # metadata: partition counts
            keys: dict[TopicPartition, set[bytes]] = {}
            for topic, topic_keys in wanted.items():
                n = len(consumer.partitions_for_topic(topic) or ())
                if n == 0:
                    raise ValueError(f"topic {topic!r} does not exist")
                for key in topic_keys:
                    keys.setdefault(TopicPartition(topic, kafka_partition(key, n)), set()).add(key)
            tps = list(keys)
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(ends[tp] - 1, 0))
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(*tps, timeout_ms=100)
            for tp in tps:
                stop, step = max(consumer.highwater(tp) or 0, ends[tp]), 256
                while stop > 0:
                    start = max(0, stop - step)
                    oldest = await _read_range(consumer, tp, start, stop, keys[tp], found[tp.topic])
                    if start == 0 or oldest < since_ms:
                        break
                    stop, step = start, step * 2
        finally:
            await consumer.stop()
    return found


async def _read_range(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int, keys: set[bytes],
                      out: dict[bytes, list[bytes]]) -> int:
    """Collect wanted keys in offsets [start, stop); returns the oldest timestamp seen."""
    consumer.seek(tp, start)
    oldest = 2**63
    while await consumer.position(tp) < stop:
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
        for m in batch.get(tp, []):
            if m.offset >= stop:
                return oldest
            oldest = min(oldest, m.timestamp)
            if m.key in keys and m.value is not None:
                out.setdefault(m.key, []).append(m.value)
    return oldest
