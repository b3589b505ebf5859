"""Publishes synthetic traffic to Kafka: transactions at a fixed rate, labels after a delay.

Open loop: the send schedule follows the clock, not the consumer, so a slow worker shows up as
latency instead of silently lowering the offered load.

Event times are either the simulation's own (``GeneratorConfig.start_ms`` on, a simulated day every
few seconds: card histories look like days of use) or the wall clock at each send (``wall_clock``:
what a live source sends, but each card then pays every few seconds). Every transaction that gets a
label has it published before :func:`publish_traffic` returns: the last ones are waited for (or sent
early when the run is stopped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import math
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaProducer

from stream_app.devtools.generator import GeneratorConfig, LabeledTx, label_record, simulate
from stream_app.devtools.malformed import corrupt

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    rate: float = 1000.0  # transactions per second
    count: int | None = None  # stop after this many transactions (valid + malformed)
    seconds: float | None = None  # or after this long
    label_delay_s: float = 5.0  # labels follow their transaction after this long; < 0: no labels
    malformed_rate: float = 0.0  # share of messages replaced by a malformed variant
    foreign_key_rate: float = 0.0  # share of valid messages keyed by tx_id instead of card_id
    # A data drift: from this second on, amounts are multiplied by shift_factor (an upstream unit or
    # currency bug, a price shock): what the worker's drift monitor is there to notice.
    shift_after_s: float | None = None
    shift_factor: float = 3.0
    wall_clock: bool = False  # event time = the wall clock at each send, instead of the simulation's
    # The producer's linger: records gathered per batch. The embedded broker (Tansu 0.6.0, memory storage)
    # slows down with the number of batches a partition holds (docs/notes/tansu.md): long runs need bigger batches.
    linger_ms: int = 5


@dataclass
class TrafficReport:
    sent: int = 0
    malformed: int = 0
    labels: int = 0
    frauds: dict[str, str] = field(default_factory=dict)  # tx_id -> injected pattern
    valid_ids: set[str] = field(default_factory=set)
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # spent sending transactions (without the wait for the last labels)
    labels_pending: int = 0  # labels not yet due
    labels_early: int = 0  # sent before their delay because the run was interrupted
    first_event_ms: int | None = None  # event times of the first and last transaction sent
    last_event_ms: int | None = None


def stamped(item: LabeledTx, plan: TrafficPlan, elapsed_s: float, now_ms: int) -> LabeledTx:
    """The transaction as sent: event time from the wall clock (``wall_clock``), amounts shifted by
    ``shift_factor`` once the drift scenario has begun."""
    tx = item.tx
    if plan.shift_after_s is not None and elapsed_s >= plan.shift_after_s:
        tx = dataclasses.replace(tx, amount=round(tx.amount * plan.shift_factor, 2))
    if plan.wall_clock:
        tx = dataclasses.replace(tx, ts_ms=now_ms)
    return item if tx is item.tx else dataclasses.replace(item, tx=tx)


def due_transactions(elapsed_s: float, plan: TrafficPlan) -> int:
    """How many transactions the open-loop schedule has sent by ``elapsed_s`` (the first at once)."""
    due = int(elapsed_s * plan.rate) + 1
    return due if plan.count is None else min(due, plan.count)


async def publish_traffic(
    bootstrap: str,
    transactions_topic: str,
    labels_topic: str,
    config: GeneratorConfig,
    plan: TrafficPlan,
    *,
    on_progress: Callable[[TrafficReport], None] | None = None,
    stop: asyncio.Event | None = None,
    **client_kwargs: Any,
) -> TrafficReport:
    rng = random.Random(config.seed ^ 0x5EED)
    report = TrafficReport()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=plan.linger_ms, acks="all", **client_kwargs)
    pending_labels: list[tuple[float, int, LabeledTx]] = []  # (due, sequence, transaction)
    in_flight: list[asyncio.Future[Any]] = []
    source = simulate(config)
    start = time.monotonic()
    last_progress = start
    stopped = stop.is_set if stop else lambda: False

    async def send_due_labels(now: float) -> None:
        while pending_labels and pending_labels[0][0] <= now:
            item = heapq.heappop(pending_labels)[2]  # label_time: when it is published
            in_flight.append(await producer.send(labels_topic, _label_bytes(item), key=item.tx.card_id.encode()))
            report.labels += 1
        report.labels_pending = len(pending_labels)

    try:
        await producer.start()  # inside the try: a producer that failed to start is closed too
        while not stopped():
            now = time.monotonic()
            elapsed = now - start
            if plan.seconds is not None and elapsed >= plan.seconds:
                break
            if plan.count is not None and report.sent >= plan.count:
                break
            due = due_transactions(elapsed, plan)
            while report.sent < due:
                item = stamped(next(source), plan, elapsed, int(time.time() * 1000))
                in_flight.append(await _send_one(producer, transactions_topic, item, plan, rng, report))
                if plan.label_delay_s >= 0 and item.tx.tx_id in report.valid_ids:
                    heapq.heappush(pending_labels, (now + plan.label_delay_s, report.sent, item))
            await send_due_labels(now)
            if len(in_flight) > 2000:
                await asyncio.gather(*in_flight)
                in_flight.clear()
            if on_progress and now - last_progress >= 1.0:
                on_progress(report)
                last_progress = now
            await asyncio.sleep(0.005)
        report.seconds = time.monotonic() - start
        # The last transactions' labels are not due yet: wait them out, each with its delay; an
        # interrupted run sends them at once. Either way every transaction that gets a label has it.
        while pending_labels:
            now = time.monotonic()
            if stopped():
                report.labels_early = len(pending_labels)
                now = math.inf
            await send_due_labels(now)
            if on_progress and now - last_progress >= 1.0:
                on_progress(report)
                last_progress = now
            await asyncio.sleep(0.02)
        await asyncio.gather(*in_flight)
        return report
    finally:
        await producer.stop()


async def publish_due_labels(bootstrap: str, labels_topic: str, items: list[LabeledTx],
                             **client_kwargs: Any) -> int:
    """Publish the labels of ``items`` at once (tests and replays that do not wait for a delay)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", **client_kwargs)
    try:
        await producer.start()
        futures = [await producer.send(labels_topic, _label_bytes(i), key=i.tx.card_id.encode()) for i in items]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


def _label_bytes(item: LabeledTx) -> bytes:
    return orjson.dumps(label_record(item, int(time.time() * 1000)))


async def _send_one(producer: AIOKafkaProducer, topic: str, item: LabeledTx, plan: TrafficPlan,
                    rng: random.Random, report: TrafficReport) -> asyncio.Future[Any]:
    tx = item.tx
    report.sent += 1
    report.first_event_ms = tx.ts_ms if report.first_event_ms is None else report.first_event_ms
    report.last_event_ms = tx.ts_ms
    if plan.malformed_rate and rng.random() < plan.malformed_rate:
        value, reason = corrupt(tx, rng)
        report.malformed += 1
        report.malformed_reasons[reason] = report.malformed_reasons.get(reason, 0) + 1
        return await producer.send(topic, value, key=tx.card_id.encode())
    report.valid_ids.add(tx.tx_id)
    if item.is_fraud:
        report.frauds[tx.tx_id] = item.pattern or "fraud"
    key = tx.tx_id if plan.foreign_key_rate and rng.random() < plan.foreign_key_rate else tx.card_id
    return await producer.send(topic, tx.to_bytes(), key=key.encode())


async def until_signalled(run: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``run(stop)`` with Ctrl-C and SIGTERM setting ``stop``: the command ends early, but cleanly
    and with its summary (a container stop is a SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await run(stop)
