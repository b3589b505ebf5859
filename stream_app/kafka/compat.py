"""Every use of faust / aiokafka / prometheus-client / River internals, in one place.

Each touch is marked (``# noqa: SLF001`` where ruff's SLF rule sees it) and says why it is needed;
``tests/unit/test_compat.py`` fails when an upgraded dependency changes what a touch relies on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer


def raw_producer(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer under faust's (outputs and changelogs are sent as partition batches)."""
    return cast(AIOKafkaProducer, app.producer._ensure_producer())  # noqa: SLF001


async def micro_batches(stream: faust.StreamT[bytes], size: int, within_s: float) -> AsyncIterator[list[faust.EventT]]:
    """Micro-batches of up to ``size`` events straight from the topic's queue, unacknowledged (the caller
    acknowledges a batch once its outputs are confirmed; an interrupted batch is redelivered).

    faust's ``take``/``noack_take`` move each event through the stream's per-event iterator (sensors,
    processors, a passive-drainer task): measured at ~14 events per 5 ms window on a busy 2-core worker,
    so batches stayed tiny and their fixed costs dominated. Here a batch is the first event plus whatever
    the conductor has queued meanwhile, waiting at most ``within_s`` for more when fewer than ``size``
    are there; each message is tracked as faust's stream would (the rebalance waits for its ack), and each
    partition's inbound time is recorded as faust's stream would (its consumer logs "Stream has not
    started processing TP(...)" for a partition without one once stream_processing_timeout has passed)."""
    channel = cast(faust.ChannelT, aiter(stream.channel))  # registers the iterator channel the conductor delivers to
    queue = channel.queue
    track = stream.app.consumer.track_message
    inbound = stream.app.monitor.stream_inbound_time
    loop = asyncio.get_running_loop()
    while True:
        try:
            events = [await queue.get()]
        except StopAsyncIteration:  # faust stops its channels' readers this way at shutdown
            return
        deadline = loop.time() + within_s
        while len(events) < size:
            if queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    events.append(await asyncio.wait_for(queue.get(), remaining))
                except (TimeoutError, StopAsyncIteration):
                    break
            else:
                events.append(queue.get_nowait())
        now = time.monotonic()
        for event in events:
            track(event.message)
            inbound[event.message.tp] = now
        yield events


async def acknowledge(stream: faust.StreamT[bytes], events: list[faust.EventT]) -> None:
    """Mark a micro-batch's messages safe to commit (faust commits a consecutive run of them)."""
    for event in events:
        await stream.ack(event)
