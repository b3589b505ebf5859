"""The score agent: micro-batches of raw transaction messages -> ingress -> scorer -> partition batches.

Per micro-batch: bytes -> parse (bad -> dead letter) -> re-key by card when needed -> per-card state ->
features -> River + ONNX -> decision -> ``scores`` (every transaction) and ``fraud-alerts`` (risky ones).
The feature vectors are captured in the card's partition while scoring, for the label join. The order in
which the batch's effects are written and acknowledged is the delivery protocol
(:mod:`stream_app.worker.delivery`, steps numbered there).

The agent reads raw bytes and validates them itself: a faust deserializer error would be acknowledged
and lost, while here every bad message becomes a dead-letter record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import Any

import faust
import orjson
import structlog

from stream_app.domain.drift import DriftEvent, DriftMonitor
from stream_app.domain.entities import with_suspects
from stream_app.domain.events import Transaction
from stream_app.domain.features import N_FEATURES as N_CARD_FEATURES
from stream_app.domain.features import CardState
from stream_app.domain.ingress import Ingress, capture, capture_key, card_of
from stream_app.domain.learning import Captured
from stream_app.domain.records import Source, alert_record
from stream_app.domain.scoring import FraudScorer, Scored
from stream_app.kafka.batch_send import BatchedTable, PartitionBatches, delivered
from stream_app.kafka.compat import acknowledge, micro_batches, store_dict
from stream_app.kafka.security import KafkaSecurity
from stream_app.kafka.witness import written_since
from stream_app.settings import Settings
from stream_app.worker import delivery
from stream_app.worker.entities import EntityReplica
from stream_app.worker.in_flight import InFlight
from stream_app.worker.metrics import Metrics, observe_many
from stream_app.worker.outputs import Outputs, now_ms

log = structlog.get_logger("stream_app.worker")


class ScoreAgent:
    """Scores the transactions topic (and its re-keyed twin) in micro-batches."""

    def __init__(self, settings: Settings, metrics: Metrics, scorer: FraudScorer, ingress: Ingress,
                 outputs: Outputs, tables: dict[str, Any], security: KafkaSecurity, entities: EntityReplica,
                 fail: Callable[[BaseException, str], None],
                 before_first_batch: Callable[[], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.scorer = scorer
        self.ingress = ingress
        self.outputs = outputs
        self.cards, self.captured, self.parked = tables["cards"], tables["captured"], tables["parked"]
        self.security = security
        self.entities = entities
        self.fail = fail
        self.before_first_batch = before_first_batch  # the rule set read to its end (worker/rules.py)
        self.ledger = delivery.Ledger(now_ms=now_ms)
        self.positions: dict[tuple[str, int], int] = {}  # last offset read per input partition (lag gauge)
        self.drift = drift_monitor(scorer, settings)

    async def agent(self, stream: faust.StreamT[bytes]) -> None:
        try:
            await self.run(stream)
        except Exception as exc:  # a write failed for good (or a bug): stop, nothing of it acknowledged
            self.fail(exc, "score")

    async def run(self, stream: faust.StreamT[bytes]) -> None:
        """The protocol's loop: state sent (step 2) before the batch's outputs start; batches pipelined
        up to ``max_in_flight_batches`` (the next one is scored while this one waits for the broker)."""
        s = self.settings
        await self.outputs.fetch_metadata(*(t.changelog_topic.get_topic_name()
                                            for t in (self.cards, self.captured, self.parked)))
        if self.before_first_batch is not None:
            await self.before_first_batch()
        in_flight = InFlight(s.max_in_flight_batches, lambda exc: self.fail(exc, "score"))
        async for events in micro_batches(stream, s.batch_size, s.batch_window_ms / 1000):
            seq = self.ledger.open()
            state = self.outputs.batches()
            pending = await self.process_batch(events, state, seq)
            state_acks = await state.send()
            if self.ledger.repairs:  # redelivered events that may lack outputs: look once nothing is in flight
                await in_flight.drain()
                await asyncio.gather(*state_acks)
                pending.extend(await self.repair())
            await in_flight.add(self.confirm(stream, events, state_acks, pending, seq))
        await in_flight.drain()  # shutting down: let the batches taken so far be confirmed and acked

    async def confirm(self, stream: faust.StreamT[bytes], events: list[faust.EventT],
                      state_acks: list[asyncio.Future[Any]], outputs: list[Awaitable[Any]], seq: int) -> None:
        """Steps 2-4: state confirmed, then the outputs, then the batch acknowledged and closed (an
        interrupted batch stays unacknowledged and is redelivered)."""
        await asyncio.gather(*state_acks)
        await asyncio.gather(*outputs)
        await acknowledge(stream, events)
        self.ledger.close(seq)

    async def process_batch(self, events: list[faust.EventT], state: PartitionBatches,
                            seq: int) -> list[Awaitable[Any]]:
        """Step 1. Card states, captured vectors (their changelogs) and re-keyed transactions go into
        ``state``; returns the output sends (not started) that the caller awaits after ``state``.

        The work is done in slices of ``batch_slice`` events with a yield to the event loop between them, so
        that HTTP requests, the label agent and the entity replica wait for a slice, not for the batch. Safe
        against a rebalance in between: faust's revocation waits for this batch's messages to be acknowledged
        before it lets go of the partitions' tables (see :func:`stream_app.kafka.compat.micro_batches`)."""
        s, m = self.settings, self.metrics
        step = s.batch_slice
        m.consumed.inc(len(events))
        m.batch_size.observe(len(events))
        decode_s = features_s = 0.0
        sends: list[Awaitable[Any]] = []
        outputs = self.outputs.batches()  # scores, alerts, examples of parked labels
        states: dict[str, CardState] = {}
        entries: dict[str, delivery.LedgerEntry | None] = {}
        load = self._loader(entries)
        txs: list[Transaction] = []
        rows: list[list[float]] = []
        sources: list[Source] = []
        for i, event in enumerate(events):
            if i and not i % step:
                await asyncio.sleep(0)
            msg = event.message
            source = Source.of(msg)
            self.positions[(msg.topic, msg.partition)] = msg.offset
            out = self.ingress(event.value, event.key, msg.topic, states, load, partition=msg.partition)
            decode_s += out.decode_s
            features_s += out.features_s
            if out.kind == "scored":
                assert out.tx is not None and out.row is not None
                txs.append(out.tx)
                rows.append(out.row)
                sources.append(source)
                self.entities.observe_local(out.tx)  # the batch's next events see it, as in training
            elif out.kind == "rekeyed":
                assert out.tx is not None
                # With the card states: handed to the producer in input order (the outputs of a later batch
                # may be sent before an earlier one's), so a card's re-keyed events stay in order.
                state.add(s.rekeyed_topic, out.tx.card_id.encode(), out.forward or b"", card=True)
                m.rekeyed.inc()
            elif out.kind == "duplicate":
                assert out.tx is not None
                if not self.ledger.recheck(out.tx, entries.get(out.tx.card_id)):
                    m.duplicates.inc()
            else:
                assert out.error is not None
                sends.append(self.outputs.dead_letter(s.dlq_topic, event.value, out.error, source, event.key))
        t2 = time.perf_counter()
        entries.update(self.ledger.remember(entries, txs, rows, sources, seq))
        sizes = []
        cards = BatchedTable(self.cards, state)
        for card_id, card in states.items():
            stored = delivery.encode_card(card, entries.get(card_id))
            sizes.append(len(stored))
            cards[card_id.encode()] = stored
        observe_many(m.card_state_bytes, sizes)
        m.stage_seconds.labels("decode").inc(decode_s)
        m.stage_seconds.labels("features").inc(features_s + time.perf_counter() - t2)
        scored: list[Scored] = []
        for start in range(0, len(txs), step):
            await asyncio.sleep(0)
            part = self.scorer.score_many(txs[start:start + step], rows[start:start + step],
                                          observe=self._observe_stage)
            t3 = time.perf_counter()
            self.outputs.publish(part, sources[start:start + step], outputs)
            self._capture(part, states, state, outputs)
            m.stage_seconds.labels("produce").inc(time.perf_counter() - t3)
            scored.extend(part)
        if txs:
            if self.drift is not None:
                warm = [self.drift.is_warm(states[tx.card_id], tx.ts_ms) for tx in txs]
                for drift_event in self.drift.update_many(rows, [x.onnx_score for x in scored], warm):
                    self._on_drift(drift_event)
        sends.append(delivered(outputs.send()))  # a coroutine: the batches are handed over when awaited
        return sends

    def _loader(self, entries: MutableMapping[str, delivery.LedgerEntry | None]) -> Callable[[str], CardState | None]:
        """Reads a stored card for the ingress, keeping its ledger entry aside in ``entries``."""
        store = store_dict(self.cards)

        def load(card_id: str) -> CardState | None:
            stored = store.get(card_id.encode())
            if stored is None:
                return None
            card, entries[card_id] = delivery.decode_card(stored)
            return card

        return load

    async def repair(self) -> list[Awaitable[Any]]:
        """Redelivered events that may lack outputs: read the output topics back, publish what is missing."""
        s, m = self.settings, self.metrics
        items, since = self.ledger.take_repairs()
        wanted = delivery.witness_request(items, s.scores_topic, s.alerts_topic)
        found = await written_since(s.bootstrap_servers, wanted, since, **self.security.client_kwargs())
        scored = self.scorer.score_many([r.tx for r in items], [self._vector_of(r.tx, r.features) for r in items])
        plan = delivery.plan_repair(items, [x.is_alert for x in scored], found[s.scores_topic],
                                    delivery.alerted(found[s.alerts_topic]))
        now, sends = now_ms(), []
        for step in plan:
            item, source = scored[step.index], items[step.index].source
            if step.kind == "score":
                sends.append(self.outputs.send(s.scores_topic, step.tx_id.encode(),
                                               self.outputs.score_bytes(item, source, now)))
            else:
                record = orjson.dumps(alert_record(item, self.scorer.reasons, now))
                sends.append(self.outputs.send(s.alerts_topic, step.card_id.encode(), record))
        n_scores = sum(step.kind == "score" for step in plan)
        m.scored.inc(n_scores)
        m.duplicates.inc(len(items) - n_scores)
        log.info("redelivery.checked", events=len(items), scores_republished=n_scores,
                 alerts_republished=len(plan) - n_scores)
        return sends

    def _vector_of(self, tx: Transaction, features: list[float]) -> list[float]:
        """A remembered vector as the models now take it: one remembered by a worker of another feature set
        (before an upgrade) keeps its card features and takes the entity features the replica has now."""
        if len(features) == len(self.scorer.features.names):
            return features
        return features[:N_CARD_FEATURES] + self.entities.table.features(tx)

    def _capture(self, scored: list[Scored], states: dict[str, CardState], state: PartitionBatches,
                 outputs: PartitionBatches) -> None:
        """Keep, per transaction, the vector and scores the models saw, in the card's partition, until
        its label comes; a label that arrived first (parked) is joined now (its example is an output)."""
        now = now_ms()
        captured = BatchedTable(self.captured, state, card_of)
        parked = BatchedTable(self.parked, state, card_of)
        for item in scored:
            vector = Captured.from_scored(item, now, self.entities.table.keys(item.tx))
            example = capture(capture_key(item.tx.card_id, item.tx.tx_id), vector, captured, parked,
                              self.outputs.pans)
            if example is not None:
                example = replace(example, entity=with_suspects(example.entity, example.is_fraud,
                                                                states.get(item.tx.card_id)))
                self.metrics.labels.labels("joined").inc()
                outputs.add(self.settings.examples_topic, example.tx_id.encode(), example.to_bytes())

    def _on_drift(self, event: DriftEvent) -> None:
        self.metrics.drift_detected.labels(event.name).set(1.0 if event.detected else 0.0)
        if event.detected:
            log.warning("drift.detected", feature=event.name, psi=round(event.psi, 4))
        else:
            log.info("drift.resolved", feature=event.name, psi=round(event.psi, 4))

    def _observe_stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage).inc(seconds)


def drift_monitor(scorer: FraudScorer, settings: Settings) -> DriftMonitor | None:
    """Drift of the features and of the ONNX score against the held-out period recorded in the model
    card (the distribution the model was validated on), when the card has one."""
    reference = scorer.onnx.card.get("drift_reference")
    if reference is None:
        log.warning("drift.no_reference", onnx_version=scorer.onnx.version)
        return None
    window = settings.drift_window
    try:
        return DriftMonitor(reference, window=window, psi_threshold=settings.drift_psi, min_count=min(1000, window),
                            names=scorer.features.names)
    except ValueError as exc:  # e.g. a reference without the warm-card filter: it would false-alarm
        log.warning("drift.reference_refused", onnx_version=scorer.onnx.version, error=str(exc))
        return None
