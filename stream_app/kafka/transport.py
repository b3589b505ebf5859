"""stream_app's Faust transport: fetch-verified changelog highwaters, a lossless seek after a rebalance,
and a fetch loop without a task pair per message. This module holds the public-API parts; the faust driver
classes override faust internals, so they live in :mod:`stream_app.kafka.compat` (see their docstrings,
with figures).

Why: Tansu 0.6.0 answers ListOffsets(latest) with the *last batch's base offset + 1* when that
batch holds several records (150 records in one batch -> end offset 1, while a Fetch reports
high watermark 150). Faust's table recovery reads each changelog partition up to
``consumer.highwaters()``, which aiokafka's driver takes from ``end_offsets`` (ListOffsets), so on
Tansu a rebuilt table silently loses its last updates. This driver keeps everything of
faust's aiokafka driver except the highwaters used by recovery, which it takes as the larger of
``end_offsets`` and the high watermark of a Fetch. On Apache Kafka both agree, so the result is
unchanged there; the cost is one short-lived consumer per recovery.

Select it with ``faust.App(broker=broker_url(bootstrap, fetch_verified_offsets=True))``: faust finds the
URL scheme ``tansu://`` through this package's ``faust.transports`` entry point (pyproject.toml), which
names :class:`stream_app.kafka.compat.Transport`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

SCHEME = "tansu"
_FETCH_WAIT_MS = 100


async def verified_highwaters(
    bootstrap: str,
    tps: Iterable[TP],
    *,
    timeout_s: float = 15.0,
    **client_kwargs: Any,
) -> dict[TP, int]:
    """Return each partition's end offset, corrected by a Fetch's high watermark.

    A consumer without group assigns the partitions, reads ``end_offsets`` (ListOffsets), seeks
    each partition to ``max(end - 1, 0)`` and fetches until every partition has reported a
    high watermark; the larger of the two values wins. ``client_kwargs`` go to
    :class:`aiokafka.AIOKafkaConsumer` (security settings, client id). Raises ``TimeoutError``
    after ``timeout_s``: an unconfirmed end offset would make table recovery lose data silently.
    """
    requested = list(tps)
    if not requested:
        return {}
    # aiokafka asserts its own TopicPartition type; results are keyed by the caller's objects.
    partitions = [TopicPartition(tp.topic, tp.partition) for tp in requested]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=_FETCH_WAIT_MS,
        request_timeout_ms=int(timeout_s * 1000),
        **client_kwargs,
    )
    async with asyncio.timeout(timeout_s):
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(ends[tp] - 1, 0))
            while any(consumer.highwater(tp) is None for tp in partitions):
                await consumer.getmany(*partitions, timeout_ms=_FETCH_WAIT_MS)
            return {
                key: max(ends[tp], consumer.highwater(tp))
                for key, tp in zip(requested, partitions, strict=True)
            }
        finally:
            await consumer.stop()


def broker_url(bootstrap: str, *, fetch_verified_offsets: bool) -> str:
    """Faust ``broker=`` URL for a ``host:port[,host:port...]`` bootstrap string.

    ``fetch_verified_offsets=True`` selects :class:`stream_app.kafka.compat.Transport` (needed on Tansu,
    harmless on Apache Kafka); ``False`` selects faust's stock aiokafka driver (``kafka://``).
    """
    scheme = SCHEME if fetch_verified_offsets else "kafka"
    return ";".join(f"{scheme}://{host.strip()}" for host in bootstrap.split(","))

