"""Read a bounded range of a topic, for batch rescoring: raw messages with their position; and the consumer
that follows a whole log (``log_follower``).

Bounds are applied by reading and filtering, never with ``offsets_for_times``, ``end_offsets`` or
``seek_to_end``: on the embedded broker (Tansu) ListOffsets answers wrong ends when producer batches
hold several records (see shared notes). A partition is finished when its end bound is passed or when
it has caught up with the high watermark of a fetch response; the read stops when every partition is
finished or none has delivered anything for ``idle_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from stream_app.domain.records import Source

if TYPE_CHECKING:
    from stream_app.kafka.security import KafkaSecurity
    from stream_app.settings import Settings


def log_follower(settings: Settings, security: KafkaSecurity) -> AIOKafkaConsumer:
    """A consumer for a log every worker reads whole and follows (the examples log, the score records, the rules):
    no group, no committed offsets (the caller assigns and seeks), the earliest offset when none is asked for."""
    return AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                            fetch_max_wait_ms=max(settings.fetch_max_wait_ms, 50), auto_offset_reset="earliest",
                            **security.client_kwargs())


async def metadata_round_trip(consumer: AIOKafkaConsumer, wait_s: float = 30.0) -> None:
    """A metadata round trip (the topics and their partitions), asked again while the broker does not answer, for
    up to ``wait_s``: a follower starting while the broker restarts must not crash the worker on its first try (the
    worker's broker probe is what decides a lost broker, `broker.topics_missing`)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await consumer.topics()
            return
        except KafkaError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions, waiting for its metadata (the worker creates its topics at start)."""
    for _ in range(100):
        await metadata_round_trip(consumer)
        found = consumer.partitions_for_topic(topic)
        if found:
            return sorted(found)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions after 10 s")


async def at_end(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> bool:
    """Every partition read up to the high watermark of its last fetch response (False before a first one): a
    follower has caught up with its log. Not ``end_offsets``: wrong on the embedded broker (docs/notes/tansu.md)."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


@dataclass(frozen=True, slots=True)
class TopicRange:
    """Per partition: offsets in ``[start_offset, end_offset)`` and message timestamps (ms) in
    ``[start_ms, end_ms)``; ``None`` is unbounded. A partition ends at its first message stamped at or
    after ``end_ms`` (the offset ``offsets_for_times(end_ms)`` would answer)."""

    start_offset: int = 0
    end_offset: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None

    def passed(self, m: ConsumerRecord[bytes, bytes]) -> bool:
        return ((self.end_offset is not None and m.offset >= self.end_offset)
                or (self.end_ms is not None and m.timestamp >= self.end_ms))

    def includes(self, m: ConsumerRecord[bytes, bytes]) -> bool:
        return self.start_ms is None or m.timestamp >= self.start_ms


def read_topic(bootstrap: str, topic: str, bounds: TopicRange, *, idle_s: float = 1.0,
               on_progress: Callable[[int], None] | None = None,
               client_kwargs: Mapping[str, Any] | None = None) -> list[tuple[Source, bytes]]:
    """Messages of ``topic`` within ``bounds``, ordered by partition then offset (a deterministic
    "file order" for ties in event time). ``on_progress(n)`` is called with the count read so far.
    Raises ``ConnectionError`` when the broker cannot be reached, ``ValueError`` for an unknown topic.
    ``client_kwargs`` go to the consumer (security settings: ``stream_app.kafka.security.client_kwargs``)."""
    return asyncio.run(_read(bootstrap, topic, bounds, idle_s, on_progress or (lambda n: None),
                             dict(client_kwargs or {})))


async def _read(bootstrap: str, topic: str, bounds: TopicRange, idle_s: float,
                on_progress: Callable[[int], None], client_kwargs: dict[str, Any]) -> list[tuple[Source, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100, **client_kwargs)
    try:
        await consumer.start()
        await consumer.topics()  # a metadata round trip, so that the partitions are known
    except KafkaError as exc:
        await consumer.stop()
        raise ConnectionError(f"cannot read {topic!r} from {bootstrap}: {exc!r}") from exc
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        position: dict[TopicPartition, int] = {}
        for tp in tps:
            consumer.seek(tp, bounds.start_offset)
            position[tp] = bounds.start_offset
        out: list[tuple[Source, bytes]] = []
        open_tps = set(tps)
        last_data = time.monotonic()
        while open_tps and time.monotonic() - last_data < idle_s:
            batches = await consumer.getmany(*open_tps, timeout_ms=200, max_records=10_000)
            for tp, messages in batches.items():
                last_data = time.monotonic()
                for m in messages:
                    if bounds.passed(m):
                        open_tps.discard(tp)
                        consumer.pause(tp)  # no more fetches for it
                        break
                    position[tp] = m.offset + 1
                    if bounds.includes(m):
                        out.append((Source(m.topic, m.partition, m.offset, m.timestamp), m.value or b""))
            for tp in list(open_tps):
                highwater = consumer.highwater(tp)
                if highwater is not None and position[tp] >= highwater:
                    open_tps.discard(tp)
                    consumer.pause(tp)
            on_progress(len(out))
        out.sort(key=lambda item: (item[0].partition, item[0].offset))
        return out
    finally:
        await consumer.stop()
