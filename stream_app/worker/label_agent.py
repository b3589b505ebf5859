"""The label agent: labels join the feature vectors captured at scoring time, and become examples.

A label is read by card (re-keyed when its key or partition is not its card's), joined in the card's
partition with the captured vector of its transaction, and the example goes to the examples log that
every worker's learner applies (:mod:`stream_app.worker.learner`). A label for a transaction not scored
yet is parked for ``STREAM_APP_LABEL_WAIT_S``; the timers here expire parked labels and old captures.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import faust
import structlog

from stream_app.domain.entities import with_suspects
from stream_app.domain.events import InvalidEvent, UnknownTransaction
from stream_app.domain.features import CardState
from stream_app.domain.ingress import card_of, join_label
from stream_app.domain.learning import LEARNED, Learned, ParkedLabel, read_captured
from stream_app.domain.records import Source
from stream_app.kafka.batch_send import BatchedTable, delivered
from stream_app.kafka.compat import acknowledge, micro_batches, store_dict
from stream_app.settings import Settings
from stream_app.worker import delivery
from stream_app.worker.in_flight import InFlight
from stream_app.worker.metrics import Metrics
from stream_app.worker.outputs import Outputs, now_ms

log = structlog.get_logger("stream_app.worker")


class LabelAgent:
    """Joins the labels topic (and its re-keyed twin) with the captured-features table."""

    def __init__(self, settings: Settings, metrics: Metrics, outputs: Outputs, tables: dict[str, Any],
                 fail: Callable[[BaseException, str], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.outputs = outputs
        self.cards, self.captured, self.parked = tables["cards"], tables["captured"], tables["parked"]
        self.fail = fail

    async def agent(self, stream: faust.StreamT[bytes]) -> None:
        try:
            await self.run(stream)
        except Exception as exc:  # as in the score agent: stop, the batch unacknowledged
            self.fail(exc, "label-join")

    async def run(self, stream: faust.StreamT[bytes]) -> None:
        """Join each label with its captured vector; a label for a tx_id not captured (yet) is parked. Batches are
        pipelined up to ``max_in_flight_batches``, as the score agent's: joins read the tables at once, so a batch
        sees what the batches before it joined, confirmed or not."""
        s = self.settings
        await self.outputs.fetch_metadata(*(t.changelog_topic.get_topic_name()
                                            for t in (self.cards, self.captured, self.parked)))
        in_flight = InFlight(s.max_in_flight_batches, lambda exc: self.fail(exc, "label-join"))
        async for events in micro_batches(stream, s.batch_size, s.batch_window_ms / 1000):
            changes = self.outputs.batches()
            captured_table = BatchedTable(self.captured, changes, card_of)
            parked_table = BatchedTable(self.parked, changes, card_of)
            sends: list[Awaitable[Any]] = []
            now = now_ms()
            outcomes: Counter[str] = Counter()  # counted once a batch: a labelled counter's inc takes a lock
            for event in events:
                msg = event.message
                out = join_label(event.value, event.key, (msg.topic, msg.partition, msg.offset), now,
                                 max_bytes=s.max_message_bytes, pans=self.outputs.pans, captured=captured_table,
                                 parked=parked_table, input_topic=s.labels_topic, partitions=s.partitions)
                if out.kind == "dead_lettered":
                    assert out.error is not None
                    sends.append(self.dead_letter(event.value, out.error, Source.of(msg), event.key))
                elif out.example is not None:  # joined, or corrected
                    example = out.example
                    if out.kind == "corrected":
                        assert out.label is not None
                        log.info("label.corrected", tx_id=out.label.tx_id, card_id=out.label.card_id,
                                 label="fraud" if out.label.is_fraud else "legit", source=out.label.source,
                                 analyst=out.label.analyst)
                    if example.is_fraud:  # a fraud's card state names its compromise suspects (decoded only then)
                        example = replace(example, entity=with_suspects(example.entity, True,
                                                                        self._card(example.entity)))
                    changes.add(s.examples_topic, example.tx_id.encode(), example.to_bytes())
                elif out.kind == "rekeyed":
                    assert out.label is not None
                    changes.add(s.labels_rekeyed_topic, out.label.card_id.encode(), out.forward or b"", card=True)
                if out.kind != "dead_lettered":
                    outcomes[out.kind] += 1
            for kind, n in outcomes.items():
                self.metrics.labels.labels(kind).inc(n)
            sends.append(delivered(changes.send()))
            await in_flight.add(self.confirm(stream, events, sends))  # the next batch is joined meanwhile
        await in_flight.drain()  # shutting down: let the batches taken so far be confirmed and acknowledged

    @staticmethod
    async def confirm(stream: faust.StreamT[bytes], events: list[faust.EventT[bytes]],
                      sends: list[Awaitable[Any]]) -> None:
        """The batch's records acknowledged by the broker, then its input (an interrupted batch stays
        unacknowledged and is redelivered)."""
        await asyncio.gather(*sends)
        await acknowledge(stream, events)

    def _card(self, entity: dict[str, Any] | None) -> CardState | None:
        """The labelled transaction's card state (for its compromise suspects), when it has one here."""
        if entity is None:
            return None
        stored = store_dict(self.cards).get(str(entity["card"]).encode())
        return None if stored is None else delivery.decode_card(stored)[0]

    def dead_letter(self, raw: bytes, exc: InvalidEvent, source: Source, key: bytes | None) -> Awaitable[None]:
        self.metrics.labels.labels("unknown" if exc.reason == "unknown_tx" else "invalid").inc()
        return self.outputs.dead_letter(self.settings.labels_dlq_topic, raw, exc, source, key)

    async def expire_parked_labels(self) -> None:
        """A label still without its transaction after the wait is for a tx_id we never scored."""
        cutoff = now_ms() - int(self.settings.label_wait_s * 1000)
        changes = self.outputs.batches()
        parked_table = BatchedTable(self.parked, changes, card_of)
        sends = []
        for key, value in list(parked_table.items()):
            parked = ParkedLabel.from_bytes(value)
            if parked.parked_at_ms < cutoff:
                del parked_table[key]
                exc = UnknownTransaction("no scored transaction with this tx_id (never seen, or expired)", "tx_id")
                sends.append(self.dead_letter(parked.raw, exc, parked.source, parked.key))
        if sends:
            await asyncio.gather(delivered(changes.send()), *sends)

    async def expire_captured(self) -> None:
        """Drop captured vectors older than the retention, and keep only the one-byte marker of learned ones:
        memory stays bounded."""
        cutoff = now_ms() - self.settings.feature_retention_s * 1000
        changes = self.outputs.batches()
        captured_table = BatchedTable(self.captured, changes, card_of)
        for key, value in list(captured_table.items()):
            entry = read_captured(value)
            vector = entry.captured if isinstance(entry, Learned) else entry
            if vector is None or vector.captured_at_ms >= cutoff:
                continue  # the bare marker stays: a later label is recognised as a duplicate
            if isinstance(entry, Learned):  # past the retention a learned verdict can no longer be corrected
                captured_table[key] = LEARNED
            else:
                del captured_table[key]
        await delivered(changes.send())
        self.metrics.captured.set(len(self.captured))
