"""The Faust wiring (composition root): topics, tables and agents around the pure scoring core.

Flow per micro-batch of raw transaction messages:
  bytes -> parse (bad -> DLQ) -> re-key by card when needed -> per-card state (Faust table)
  -> features -> River + ONNX -> decision -> `scores` (every tx) and `fraud-alerts` (risky tx).
The feature vectors are captured in the card's partition while scoring; labels, read by card, join
them on the worker that scored the transaction and teach the River model through the examples log.

Agents read raw bytes and validate them themselves: a Faust deserializer error would be
acknowledged and lost, while here every bad message becomes a dead-letter record.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from pathlib import Path
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry
import orjson
import structlog
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from stream_app.domain.events import (
    InvalidEvent,
    Transaction,
    UnknownTransaction,
    kept_json,
)
from stream_app.domain.features import CardState
from stream_app.domain.ingress import Ingress, capture, capture_key, card_of, join_label
from stream_app.domain.pan import PanTokenizer
from stream_app.kafka.batch_send import BatchedTable, PartitionBatches, delivered, ensure_metadata, store_dict
from stream_app.kafka.transport import broker_url
from stream_app.kafka.compat import acknowledge, micro_batches, raw_producer
from stream_app.kafka.witness import written_since
from stream_app.kafka.security import kafka_security
from stream_app.domain.drift import DriftEvent, DriftMonitor
from stream_app.worker.metrics import Metrics, observe_many
from stream_app.domain.learning import LEARNED, Captured, Example, OnlineLearner, ParkedLabel, PrequentialMetrics
from stream_app.models import checkpoint
from stream_app.models.registry import ModelWatcher
from stream_app.domain.records import (
    Source,
    alert_record,
    dead_letter_key,
    dead_letter_record,
    minimal_dead_letter_record,
    score_record,
)
from stream_app.domain.scoring import FraudScorer, Scored
from stream_app.settings import Settings

log = structlog.get_logger("stream_app.worker")


UNCONFIRMED = "unconfirmed"  # key in a card's state: its last micro-batch (see _remember_outputs)
FAILED_READY_GRACE_S = 1.0  # after a failed write: /ready answers 503 this long before the stop begins
UNCONFIRMED_MAX_AGE_MS = 300_000  # older: long confirmed (takeovers take seconds), a plain duplicate


def _now_ms() -> int:
    return int(time.time() * 1000)


class StreamApp:
    """Builds the Faust app and holds what its agents share (scorer, stats)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.failure: str | None = None  # set by fail(): a write failed for good; the worker is stopping
        # How fail() stops the worker: `stream-app worker` sets its faust Worker's stop (bounded, see cli).
        self.request_stop: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self.scorer = FraudScorer.from_settings(settings)
        self.learner = OnlineLearner(self.scorer.river, self.scorer.stacker,
                                     PrequentialMetrics(settings.quality_window, settings.review_threshold),
                                     learning=settings.river_learning)
        self.checkpoint_dir = Path(settings.data_dir) / "checkpoints"
        self.checkpoint_key = settings.checkpoint_key.encode() or None
        self._checkpointed_offset = -1
        self._broker_ok_at = -1e9
        self._client: AIOKafkaClient | None = None
        self.metrics = Metrics(registry)
        self._positions: dict[tuple[str, int], int] = {}
        self._partitions: dict[str, list[int]] = {}  # of the topics written in partition batches
        self.drift = self._drift_monitor()
        self.horizon_ms = settings.dedup_horizon_s * 1000
        self._unconfirmed: list[tuple[Transaction, list[float], Source]] = []
        self._seq = time.time_ns()  # micro-batch numbers, unique across restarts (kept in card states)
        self._seq_start = self._seq  # this worker's batches are numbered above it
        self._open_batches: set[int] = set()  # scored, outputs not confirmed yet
        self._unconfirmed_since = 2**63
        self.pans = PanTokenizer.from_settings(settings)
        if not self.pans.keyed:
            log.warning("pan.no_key", effect="card ids that look like card numbers are dead-lettered as raw_pan")
        self.ingress = Ingress(settings.max_message_bytes, self.horizon_ms, self.pans, settings.transactions_topic,
                              settings.partitions)
        self.kafka_security = kafka_security(settings)  # files read once; every Kafka client uses it
        self.restore_checkpoint()
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=broker_url(s.bootstrap_servers, fetch_verified_offsets=s.fetch_verified_offsets),
            broker_credentials=self.kafka_security.faust_credentials(),
            store="memory://",
            datadir=s.data_dir,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=True,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(0.5, s.session_timeout_s / 6),
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            web_tables_enabled=False,  # /table/... would expose per-card state
            web_router_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
            producer_acks=-1,
            producer_request_timeout=s.delivery_timeout_s,
            key_serializer="raw",
            value_serializer="raw",
            consumer_auto_offset_reset="earliest",
        )
        app.fetch_max_wait_ms = s.fetch_max_wait_ms  # read by stream_app.kafka.transport
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                               "value_serializer": "raw"}
        self.transactions = app.topic(s.transactions_topic, s.rekeyed_topic, **raw)
        self.labels = app.topic(s.labels_topic, s.labels_rekeyed_topic, **raw)
        # use_partitioner: the changelog partition is the key's partition (murmur2 of card_id /
        # tx_id), i.e. the partition the event came from, also when a batch mixes partitions.
        self.cards = app.Table("cards", partitions=s.partitions, use_partitioner=True,
                               key_type=bytes, value_type=bytes, help="per-card feature state")
        # Both keyed (card, tx_id) and partitioned by card: written by the agents through BatchedTable.
        self.captured = app.Table("captured-features", partitions=s.partitions, use_partitioner=True,
                                  key_type=bytes, value_type=bytes,
                                  help="feature vectors used at scoring time, until their label")
        self.parked_labels = app.Table("parked-labels", partitions=s.partitions, use_partitioner=True,
                                       key_type=bytes, value_type=bytes,
                                       help="labels that arrived before their transaction was scored")
        app.agent(self.transactions, name="score")(self._score_agent)
        app.agent(self.labels, name="label-join")(self._label_agent)
        app.timer(max(0.5, min(60.0, s.label_wait_s / 2)))(self._writes(self._expire_parked_labels))
        app.task(self._learner)
        app.timer(s.checkpoint_interval_s)(self.save_checkpoint)
        app.timer(3600.0)(self._writes(self._expire_captured))
        if s.model_watch_path:
            self.watcher = ModelWatcher(s.model_watch_path)
            app.timer(s.model_poll_s)(self._poll_model)
        app.timer(30.0)(self._log_stats)
        app.timer(5.0)(self._refresh_gauges)
        app.task(self._probe_broker)
        from stream_app.worker.http import register  # the HTTP door; imported here to keep faust.web off the core

        register(self, app)

        @app.on_before_shutdown.connect
        async def _final_checkpoint(*_: Any, **__: Any) -> None:
            await self.save_checkpoint()

        return app

    def _writes(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A timer that writes to Kafka: a failed write stops the worker (see `fail`), as in the agents."""

        @functools.wraps(job)
        async def guarded() -> None:
            try:
                await job()
            except Exception as exc:
                self.fail(exc, job.__name__.strip("_"))

        return guarded

    # -- hot path ---------------------------------------------------------------------------------
    @property
    def producer(self) -> Any:
        """The aiokafka producer under faust's (outputs and changelogs are sent as partition batches)."""
        return raw_producer(self.app)

    async def _metadata(self) -> None:
        """Partitions of every topic written in partition batches (outputs, examples, re-keyed labels, changelogs)."""
        s = self.settings
        self._partitions.update(await ensure_metadata(
            self.producer, s.scores_topic, s.alerts_topic, s.rekeyed_topic, s.examples_topic, s.labels_rekeyed_topic,
            *(t.changelog_topic.get_topic_name() for t in (self.cards, self.captured, self.parked_labels))))

    def _batches(self) -> PartitionBatches:
        return PartitionBatches(self.producer, self._partitions)

    async def _score_agent(self, stream: faust.StreamT[bytes]) -> None:
        try:
            await self._score_batches(stream)
        except Exception as exc:  # a write failed for good (or a bug): stop, nothing of it acknowledged
            self.fail(exc, "score")

    async def _score_batches(self, stream: faust.StreamT[bytes]) -> None:
        s = self.settings
        await self._metadata()
        in_flight: deque[asyncio.Future[None]] = deque()
        async for events in micro_batches(stream, s.batch_size, s.batch_window_ms / 1000):
            self._seq += 1
            self._open_batches.add(self._seq)
            state = self._batches()
            pending = self.process_batch(events, state, self._seq)
            # Card state before outputs: the batch's outputs are sends not started yet (coroutines), and
            # the state's changelog batches are handed to the producer here, in batch order, and
            # confirmed before the outputs start (_confirm), so no score or alert is out whose
            # redelivery the state would not recognise (a second alert). The reverse window (state out,
            # outputs not) is repaired on redelivery: see _repair_unconfirmed, README "Delivery guarantees".
            state_acks = await state.send()
            if self._unconfirmed:  # redelivered events that may lack outputs: look once nothing is in flight
                await asyncio.gather(*in_flight)
                in_flight.clear()
                await asyncio.gather(*state_acks)
                pending.extend(await self._repair_unconfirmed())
            # Pipelined: the next micro-batch is taken and scored while this one waits for the broker.
            confirming = asyncio.ensure_future(self._confirm(stream, events, state_acks, pending, self._seq))
            confirming.add_done_callback(self._check_confirmed)  # a failure stops the worker at once, not at the next batch
            in_flight.append(confirming)
            while in_flight and (len(in_flight) >= s.max_in_flight_batches or in_flight[0].done()):
                await in_flight.popleft()  # a failed delivery raises here: the agent stops, nothing acked
        await asyncio.gather(*in_flight)  # shutting down: let the batches taken so far be confirmed and acked

    def _check_confirmed(self, confirming: asyncio.Future[None]) -> None:
        if not confirming.cancelled() and confirming.exception() is not None:
            self.fail(cast(Exception, confirming.exception()), "score")

    def fail(self, exc: BaseException, where: str) -> None:
        """A write failed for good: say why once, turn /ready to 503 and stop the worker (exit code 70)
        without acknowledging the batch, so its messages are read again after the restart. Faust's
        shutdown would wait for the unacknowledged messages forever: it is told not to."""
        if self.failure is not None:
            return
        self.failure = f"{where}: {exc!r}"
        log.error("delivery.failed", agent=where, error=repr(exc), hint=_failure_hint(exc),
                  effect="nothing of the batch is acknowledged; the worker stops and its input is read again")
        self.app.conf.stream_wait_empty = False
        # /ready answers 503 for a moment before the stop takes the web server down, so a readiness probe
        # (or a load balancer in front of POST /score) sees the worker go out of service first.
        asyncio.get_running_loop().call_later(FAILED_READY_GRACE_S, self.request_stop)

    async def _confirm(self, stream: faust.StreamT[bytes], events: list[faust.EventT],
                       state_acks: list[asyncio.Future[Any]], outputs: list[Awaitable[Any]], seq: int) -> None:
        """Card state confirmed, then the outputs, then the batch is acknowledged (an interrupted batch
        stays unacknowledged and is redelivered; faust commits only a consecutive run of acked offsets)."""
        await asyncio.gather(*state_acks)
        await asyncio.gather(*outputs)
        await acknowledge(stream, events)
        self._open_batches.discard(seq)

    def process_batch(self, events: list[faust.EventT], state: PartitionBatches, seq: int = 0) -> list[Awaitable[Any]]:
        """Score a batch. Card states, captured vectors (their changelogs) and re-keyed transactions go into
        ``state``; returns the output sends (not started) that the caller awaits, after ``state``, before
        acknowledging."""
        s, m = self.settings, self.metrics
        m.consumed.inc(len(events))
        m.batch_size.observe(len(events))
        decode_s = features_s = 0.0
        sends: list[Awaitable[Any]] = []
        outputs = self._batches()  # scores, alerts, examples of parked labels
        states: dict[str, CardState] = {}
        txs: list[Transaction] = []
        rows: list[list[float]] = []
        sources: list[Source] = []
        for event in events:
            msg = event.message
            source = Source.of(msg)
            self._positions[(msg.topic, msg.partition)] = msg.offset
            out = self.ingress(event.value, event.key, msg.topic, states, self._load_card, partition=msg.partition)
            decode_s += out.decode_s
            features_s += out.features_s
            if out.kind == "scored":
                assert out.tx is not None and out.row is not None
                txs.append(out.tx)
                rows.append(out.row)
                sources.append(source)
            elif out.kind == "rekeyed":
                assert out.tx is not None
                # With the card states: handed to the producer in input order (the outputs of a later batch
                # may be sent before an earlier one's), so a card's re-keyed events stay in order.
                state.add(s.rekeyed_topic, out.tx.card_id.encode(), out.forward or b"")
                m.rekeyed.inc()
            elif out.kind == "duplicate":
                assert out.tx is not None
                if not self._maybe_unconfirmed(out.tx, states):
                    m.duplicates.inc()
            else:
                assert out.error is not None
                sends.append(self._dead_letter(s.dlq_topic, event.value, out.error, source, event.key))
        t2 = time.perf_counter()
        self._remember_outputs(states, txs, rows, sources, seq)
        sizes = []
        cards = BatchedTable(self.cards, state)
        for card_id, card in states.items():
            stored = kept_json(card)
            sizes.append(len(stored))
            cards[card_id.encode()] = stored
        observe_many(m.card_state_bytes, sizes)
        m.stage_seconds.labels("decode").inc(decode_s)
        m.stage_seconds.labels("features").inc(features_s + time.perf_counter() - t2)
        if txs:
            scored = self.scorer.score_many(txs, rows, observe=self._observe_stage)
            t3 = time.perf_counter()
            self._publish(scored, sources, outputs)
            self._capture(scored, state, outputs)
            m.stage_seconds.labels("produce").inc(time.perf_counter() - t3)
            if self.drift is not None:
                warm = [self.drift.is_warm(states[tx.card_id], tx.ts_ms) for tx in txs]
                for drift_event in self.drift.update_many(rows, [x.onnx_score for x in scored], warm):
                    self._on_drift(drift_event)
        sends.append(delivered(outputs.send()))  # a coroutine: the batches are handed over when awaited
        return sends

    # -- redelivery after a crash -------------------------------------------------------------------
    # Each card's state remembers the events of its micro-batches whose outputs were not confirmed yet
    # when it was written ("unconfirmed": tx_id -> features, source, batch): the state is written before
    # their outputs, and at most max_in_flight_batches are unconfirmed at a time, so only those can lack
    # their score or alert. A redelivered event found there is checked against the output topics
    # (written_since) and what is missing is published again from the remembered features; anything
    # else is a plain duplicate.
    def _remember_outputs(self, states: dict[str, CardState], txs: list[Transaction], rows: list[list[float]],
                          sources: list[Source], seq: int) -> None:
        now = _now_ms()
        fresh: dict[str, dict[str, Any]] = {}
        for tx, row, src in [*zip(txs, rows, sources, strict=True),
                             *self._unconfirmed]:  # the latter being repaired in this batch: still unconfirmed
            fresh.setdefault(tx.card_id, {})[tx.tx_id] = [row, [src.topic, src.partition, src.offset,
                                                                src.timestamp_ms], seq]
        for card_id, entries in fresh.items():
            previous = states[card_id].get(UNCONFIRMED)
            if previous:  # entries of batches still in flight stay; confirmed ones go
                entries = {t: e for t, e in previous["tx"].items() if self._still_unconfirmed(e, now)} | entries
            states[card_id][UNCONFIRMED] = {"at": now, "tx": entries}

    def _still_unconfirmed(self, entry: list[Any], now: int) -> bool:
        """An entry of this worker's batches is unconfirmed while its batch is in flight. One of another
        worker's (a takeover) stays until its redelivery can no longer come: the card's other events may
        overtake that redelivery (re-keyed events of one card take several paths), and must not drop it."""
        if len(entry) < 3:
            return False
        if self._seq_start < entry[2] <= self._seq:
            return entry[2] in self._open_batches
        return bool(entry[1][3] > now - UNCONFIRMED_MAX_AGE_MS)

    def _maybe_unconfirmed(self, tx: Transaction, states: dict[str, CardState]) -> bool:
        last = states.get(tx.card_id, {}).get(UNCONFIRMED)
        if not last or tx.tx_id not in last["tx"] or last["at"] < _now_ms() - UNCONFIRMED_MAX_AGE_MS:
            return False
        if any(t.tx_id == tx.tx_id for t, _, _ in self._unconfirmed):
            return False
        row, src = last["tx"][tx.tx_id][:2]
        self._unconfirmed.append((tx, row, Source(*src)))
        self._unconfirmed_since = min(self._unconfirmed_since, last["at"])
        return True

    async def _repair_unconfirmed(self) -> list[Awaitable[Any]]:
        s, m = self.settings, self.metrics
        items, self._unconfirmed = self._unconfirmed, []
        since, self._unconfirmed_since = self._unconfirmed_since - 5000, 2**63
        found = await written_since(
            s.bootstrap_servers,
            {s.scores_topic: {t.tx_id.encode() for t, _, _ in items},
             s.alerts_topic: {t.card_id.encode() for t, _, _ in items}},
            since, **self.kafka_security.client_kwargs())
        alerted = {orjson.loads(v).get("tx_id") for vs in found[s.alerts_topic].values() for v in vs}
        scored = self.scorer.score_many([t for t, _, _ in items], [r for _, r, _ in items])
        now, sends, n_scores, n_alerts = _now_ms(), [], 0, 0
        for item, (tx, _, source) in zip(scored, items, strict=True):
            witnessed = found[s.scores_topic].get(tx.tx_id.encode())
            if witnessed:
                alert_due = orjson.loads(witnessed[0]).get("decision") in {"review", "decline"}
            else:
                alert_due = item.is_alert
                sends.append(self._send(s.scores_topic, tx.tx_id.encode(), orjson.dumps(score_record(item, source, now))))
                n_scores += 1
            if alert_due and tx.tx_id not in alerted:
                alert = alert_record(item, self.scorer.reasons, now)
                sends.append(self._send(s.alerts_topic, tx.card_id.encode(), orjson.dumps(alert)))
                n_alerts += 1
        m.scored.inc(n_scores)
        m.duplicates.inc(len(items) - n_scores)
        log.info("redelivery.checked", events=len(items), scores_republished=n_scores, alerts_republished=n_alerts)
        return sends

    def _load_card(self, card_id: str) -> CardState | None:
        stored = store_dict(self.cards).get(card_id.encode())
        return None if stored is None else orjson.loads(stored)

    def _drift_monitor(self) -> DriftMonitor | None:
        """Drift of the features and of the ONNX score against the held-out period recorded in the model
        card (the distribution the model was validated on), when the card has one."""
        reference = self.scorer.onnx.card.get("drift_reference")
        if reference is None:
            log.warning("drift.no_reference", onnx_version=self.scorer.onnx.version)
            return None
        window = self.settings.drift_window
        try:
            return DriftMonitor(reference, window=window, psi_threshold=self.settings.drift_psi,
                                min_count=min(1000, window))
        except ValueError as exc:  # e.g. a reference without the warm-card filter: it would false-alarm
            log.warning("drift.reference_refused", onnx_version=self.scorer.onnx.version, error=str(exc))
            return None

    def _on_drift(self, event: DriftEvent) -> None:
        self.metrics.drift_detected.labels(event.name).set(1.0 if event.detected else 0.0)
        if event.detected:
            log.warning("drift.detected", feature=event.name, psi=round(event.psi, 4))
        else:
            log.info("drift.resolved", feature=event.name, psi=round(event.psi, 4))

    def _observe_stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage).inc(seconds)

    def _publish(self, scored: list[Scored], sources: list[Source], batches: PartitionBatches) -> None:
        s, m = self.settings, self.metrics
        now = _now_ms()
        reasons = self.scorer.reasons
        for item, source in zip(scored, sources, strict=True):
            record = score_record(item, source, now)
            batches.add(s.scores_topic, item.tx.tx_id.encode(), orjson.dumps(record))
            if item.is_alert:
                alert = alert_record(item, reasons, now)
                batches.add(s.alerts_topic, item.tx.card_id.encode(), orjson.dumps(alert))
                m.alerts.labels(item.decision).inc()
                log.debug("alert.raised", tx_id=item.tx.tx_id, card_id=item.tx.card_id, decision=item.decision,
                          risk=round(item.risk, 4))
        m.scored.inc(len(scored))
        observe_many(m.latency.labels("message_timestamp"), [max(0.0, (now - x.timestamp_ms) / 1000) for x in sources])
        observe_many(m.latency.labels("event_time"), [max(0.0, (now - x.tx.ts_ms) / 1000) for x in scored])
        observe_many(m.risk, [x.risk for x in scored])

    async def _dead_letter(self, topic: str, raw: bytes | None, exc: InvalidEvent, source: Source,
                           key: bytes | None) -> None:
        """Publish a dead-letter record and count it once the broker has it. A record the producer or
        broker refuses as too large is published again without the original's bytes (size and digest
        kept): a poison message must not stop the worker on every restart."""
        log.debug("event.dead_lettered", reason=exc.reason, topic=source.topic,
                  partition=source.partition, offset=source.offset)
        record = dead_letter_record(raw, exc, source, key, _now_ms(), self.pans, self.settings.dlq_original_max_bytes)
        out_key = dead_letter_key(key, self.pans)
        try:
            await self._send(topic, out_key, orjson.dumps(record))
        except Exception as error:
            if not _too_large(error):
                raise
            log.warning("dead_letter.minimal", reason=exc.reason, topic=source.topic, partition=source.partition,
                        offset=source.offset, size=record["original_size"], error=repr(error))
            await self._send(topic, out_key, orjson.dumps(minimal_dead_letter_record(record)))
        self.metrics.dead_lettered.labels(topic, exc.reason).inc()

    def _send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        return _delivered(self.app.producer.send(topic, key, value, None, None, None))

    # -- feedback path ----------------------------------------------------------------------------
    def _capture(self, scored: list[Scored], state: PartitionBatches, outputs: PartitionBatches) -> None:
        """Keep, per transaction, the vector and scores the models saw, in the card's partition, until
        its label comes; a label that arrived first (parked) is joined now (its example is an output)."""
        now = _now_ms()
        captured = BatchedTable(self.captured, state, card_of)
        parked = BatchedTable(self.parked_labels, state, card_of)
        for item in scored:
            example = capture(capture_key(item.tx.card_id, item.tx.tx_id), Captured.from_scored(item, now),
                              captured, parked, self.pans)
            if example is not None:
                self.metrics.labels.labels("joined").inc()
                outputs.add(self.settings.examples_topic, example.tx_id.encode(), example.to_bytes())

    async def _label_agent(self, stream: faust.StreamT[bytes]) -> None:
        try:
            await self._label_batches(stream)
        except Exception as exc:  # as in the score agent: stop, the batch unacknowledged
            self.fail(exc, "label-join")

    async def _label_batches(self, stream: faust.StreamT[bytes]) -> None:
        """Join each label with its captured vector; a label for a tx_id not captured (yet) is parked
        for STREAM_APP_LABEL_WAIT_S, in case its score record is still on its way."""
        s = self.settings
        await self._metadata()
        async for events in micro_batches(stream, s.batch_size, s.batch_window_ms / 1000):
            changes = self._batches()
            captured_table = BatchedTable(self.captured, changes, card_of)
            parked_table = BatchedTable(self.parked_labels, changes, card_of)
            sends: list[Awaitable[Any]] = []
            now = _now_ms()
            for event in events:
                msg = event.message
                out = join_label(event.value, event.key, (msg.topic, msg.partition, msg.offset), now,
                                 max_bytes=s.max_message_bytes, pans=self.pans, captured=captured_table,
                                 parked=parked_table, input_topic=s.labels_topic, partitions=s.partitions)
                if out.kind == "dead_lettered":
                    assert out.error is not None
                    sends.append(self._dead_letter_label(event.value, out.error, Source.of(msg), event.key))
                elif out.kind == "joined":
                    assert out.example is not None
                    changes.add(s.examples_topic, out.example.tx_id.encode(), out.example.to_bytes())
                elif out.kind == "rekeyed":
                    assert out.label is not None
                    changes.add(s.labels_rekeyed_topic, out.label.card_id.encode(), out.forward or b"")
                if out.kind != "dead_lettered":
                    self.metrics.labels.labels(out.kind).inc()
            sends.append(delivered(changes.send()))
            await asyncio.gather(*sends)
            await acknowledge(stream, events)  # only now: an interrupted batch stays unacknowledged

    def _dead_letter_label(self, raw: bytes, exc: InvalidEvent, source: Source, key: bytes | None) -> Awaitable[None]:
        self.metrics.labels.labels("unknown" if exc.reason == "unknown_tx" else "invalid").inc()
        return self._dead_letter(self.settings.labels_dlq_topic, raw, exc, source, key)

    async def _expire_parked_labels(self) -> None:
        """A label still without its transaction after the wait is for a tx_id we never scored."""
        cutoff = _now_ms() - int(self.settings.label_wait_s * 1000)
        changes = self._batches()
        parked_table = BatchedTable(self.parked_labels, changes, card_of)
        sends = []
        for key, value in list(parked_table.items()):
            parked = ParkedLabel.from_bytes(value)
            if parked.parked_at_ms < cutoff:
                del parked_table[key]
                exc = UnknownTransaction("no scored transaction with this tx_id (never seen, or expired)", "tx_id")
                sends.append(self._dead_letter_label(parked.raw, exc, parked.source, parked.key))
        if sends:
            await asyncio.gather(delivered(changes.send()), *sends)

    async def _learner(self) -> None:
        """Apply the examples log, in order, to this worker's online models (every worker does)."""
        s = self.settings
        tp = TopicPartition(s.examples_topic, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False,
                                    fetch_max_wait_ms=max(s.fetch_max_wait_ms, 50), auto_offset_reset="earliest",
                                    **self.kafka_security.client_kwargs())
        await consumer.start()
        try:
            consumer.assign([tp])
            if self.learner.offset >= 0:
                consumer.seek(tp, self.learner.offset + 1)
            else:
                await consumer.seek_to_beginning(tp)
            while True:
                batches = await consumer.getmany(tp, timeout_ms=500, max_records=2000)
                for message in batches.get(tp, []):
                    try:
                        example = Example.from_bytes(message.value)
                    except (ValueError, KeyError, TypeError):  # orjson's decode error is a ValueError
                        log.warning("learner.unreadable_example", offset=message.offset)
                        continue
                    self.learner.apply(example, message.offset)
                    self.metrics.examples_applied.inc()
                    self.metrics.label_lag.set(max(0.0, (_now_ms() - message.timestamp) / 1000))
        finally:
            await consumer.stop()

    def restore_checkpoint(self) -> None:
        ckpt, refused = checkpoint.latest(self.checkpoint_dir, self.checkpoint_key)
        for reason in refused:
            log.error("checkpoint.refused", reason=reason)
        if ckpt is None:
            log.info("checkpoint.none", directory=str(self.checkpoint_dir))
            return
        self.scorer.adopt(*ckpt.state)
        self.learner.river, self.learner.stacker = self.scorer.river, self.scorer.stacker
        self.learner.offset = ckpt.offset
        log.info("checkpoint.restored", version=ckpt.version, offset=ckpt.offset)

    async def save_checkpoint(self) -> None:
        if self.learner.offset < 0 or self.learner.offset == self._checkpointed_offset:
            return
        path = checkpoint.save(self.checkpoint_dir, self.scorer.river.version, self.learner.offset,
                               (self.learner.river, self.learner.stacker), self.checkpoint_key)
        self._checkpointed_offset = self.learner.offset
        self.metrics.checkpoint_time.set(time.time())
        log.info("checkpoint.saved", version=self.scorer.river.version, offset=self.learner.offset,
                 path=str(path))

    async def _expire_captured(self) -> None:
        """Drop captured vectors (and learned markers) older than the retention: memory stays bounded."""
        cutoff = _now_ms() - self.settings.feature_retention_s * 1000
        changes = self._batches()
        captured_table = BatchedTable(self.captured, changes, card_of)
        expired = [k for k, v in captured_table.items() if v != LEARNED and Captured.from_bytes(v).captured_at_ms < cutoff]
        for key in expired:
            del captured_table[key]
        await delivered(changes.send())
        self.metrics.captured.set(len(self.captured))

    async def _poll_model(self) -> None:
        """Hot swap: a new model file is validated off the event loop, then swapped in; a bad one is
        refused (logged once per content) and the serving model stays."""
        candidate = self.watcher.poll()
        if candidate is None:
            return
        result = await asyncio.to_thread(self.scorer.slot.try_swap, candidate)
        if result.ok:
            log.info("model.swapped", version=result.version, previous=result.previous, path=str(candidate))
        else:
            self.metrics.models_refused.inc()
            log.error("model.refused", error=result.error, serving=result.version, path=str(candidate))

    async def _probe_broker(self) -> None:
        """The broker check at start (so /ready can turn 200 with the worker), then every 5 s."""
        while True:
            await self._check_broker()
            await asyncio.sleep(5.0)

    async def _check_broker(self) -> None:
        """Readiness needs to know the broker answers; a metadata round trip, bounded."""
        try:
            if self._client is None:
                client = AIOKafkaClient(bootstrap_servers=self.settings.bootstrap_servers,
                                        **self.kafka_security.client_kwargs())
                await asyncio.wait_for(client.bootstrap(), timeout=3.0)
                self._client = client
            cluster = await asyncio.wait_for(self._client.fetch_all_metadata(), timeout=3.0)
            self._broker_ok_at = time.monotonic()
        except Exception as exc:  # any failure means "not reachable now"; logged, retried in 5 s
            log.warning("broker.unreachable", error=repr(exc))
            return
        missing = sorted({self.settings.transactions_topic, self.settings.scores_topic} - set(cluster.topics()))
        if missing:
            # The broker answers but lost the app's topics: an in-memory broker that restarted (Tansu's
            # memory storage). Consumers would stall silently; crash loudly instead, so a supervisor
            # restarts the worker once the topics are back (stream-app worker --create-topics).
            log.error("broker.topics_missing", topics=missing,
                      hint="the broker lost its data (restarted with in-memory storage?): recreate the topics")
            raise RuntimeError(f"topics {missing} are gone from the broker")

    def readiness(self) -> dict[str, bool]:
        recovery = self.app.tables.recovery if self.app.tables else None
        return {
            "tables_recovered": bool(recovery is not None and recovery.completed.is_set()),
            "not_rebalancing": not self.app.rebalancing,
            "broker_reachable": time.monotonic() - self._broker_ok_at < 15.0,
            "models_loaded": self.scorer.onnx is not None and self.scorer.river is not None,
            "writes_ok": self.failure is None,
        }

    def models_info(self) -> dict[str, Any]:
        card = {k: v for k, v in self.scorer.onnx.card.items() if k not in {"feature_stats", "params"}}
        info: dict[str, Any] = {
            "versions": self.scorer.versions(),
            "onnx": card,
            "onnx_swaps": [{"at_ms": e.at_ms, "path": str(e.path), "ok": e.result.ok, "version": e.result.version,
                            "error": e.result.error} for e in self.scorer.slot.history],
            "river": {"version": self.scorer.river.version, "labels_learned": self.scorer.river.n_learned,
                      "examples_offset": self.learner.offset, "learning": self.learner.learning},
            "combiner": "stacked" if self.scorer.stacker is not None else "weighted",
            "quality": self.learner.metrics.snapshot(),
        }
        if self.scorer.challenger is not None:
            info["challenger"] = {k: v for k, v in self.scorer.challenger.current.card.items()
                                  if k not in {"feature_stats", "params"}}
        return info

    async def _refresh_gauges(self) -> None:
        """Gauges that are cheaper to read now and then than to keep up to date per event."""
        m = self.metrics
        consumer = self.app.consumer
        assigned = consumer.assignment()
        for (topic, partition), offset in list(self._positions.items()):
            if TP(topic, partition) not in assigned:  # moved to another worker: asking would crash the app
                del self._positions[(topic, partition)]
                m.lag.remove(topic, str(partition))
                continue
            highwater = consumer.highwater(TP(topic, partition))
            if highwater is not None:
                m.lag.labels(topic, str(partition)).set(max(0, highwater - offset - 1))
        m.cards.set(len(self.cards))
        if self.drift is not None:
            for feature, psi in self.drift.psi().items():
                m.drift_psi.labels(feature).set(psi)
        m.model_info.info(self.scorer.versions())
        for model, values in self.learner.metrics.snapshot().items():
            for metric, value in values.items():
                m.quality.labels(model, metric).set(value)

    async def _log_stats(self) -> None:
        log.info("worker.stats", **self.metrics.snapshot(),
                 versions=self.scorer.versions(), quality=self.learner.metrics.snapshot())


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (faust wraps aiokafka's errors in ProducerSendError)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _too_large(exc: BaseException) -> bool:
    return any(isinstance(e, MessageSizeTooLargeError | RecordTooLargeError) for e in _causes(exc))


def _failure_hint(exc: BaseException) -> str:
    """What to fix, for the errors a restart would only repeat."""
    names = " ".join(type(e).__name__ for e in _causes(exc))
    if "AuthorizationFailed" in names:
        return "grant the worker's principal Write (and Describe) on the output and dead-letter topics"
    if _too_large(exc):
        return "raise the topic's max.message.bytes or lower STREAM_APP_DLQ_ORIGINAL_MAX_BYTES"
    if "KafkaTimeoutError" in names or "RequestTimedOut" in names:
        return "the broker did not confirm within STREAM_APP_DELIVERY_TIMEOUT_S: check that it is reachable"
    return "see the error; the worker's input is read again after the restart"


async def _delivered(send: Awaitable[Awaitable[Any]]) -> Any:
    """Faust's send returns once queued; the inner future resolves when the broker has the record."""
    return await (await send)


def create_app(settings: Settings | None = None) -> StreamApp:
    return StreamApp(settings or Settings.from_env())
