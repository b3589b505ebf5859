"""The Faust wiring (composition root): topics, tables and agents around the pure scoring core.

Flow per micro-batch of raw transaction messages:
  bytes -> parse (bad -> DLQ) -> re-key by card when needed -> per-card state (Faust table)
  -> features -> River + ONNX -> decision -> `scores` (every tx) and `fraud-alerts` (risky tx).
Labels join the feature vectors captured in `scores` (both keyed by tx_id, so the join is local to
the worker that owns the partition) and teach the River model.

Agents read raw bytes and validate them themselves: a Faust deserializer error would be
acknowledged and lost, while here every bad message becomes a dead-letter record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
import structlog

from stream_app.decision import Policy
from stream_app.events import DuplicateEvent, InvalidEvent, Transaction, parse_transaction
from stream_app.features import CardState, featurize
from stream_app.kafka.faust_transport import broker_url
from stream_app.models.onnx_model import OnnxScorer
from stream_app.models.river_model import RiverScorer
from stream_app.records import Source, alert_record, dead_letter_record, score_record
from stream_app.scoring import FraudScorer, Scored
from stream_app.settings import Settings

log = structlog.get_logger("stream_app.worker")


@dataclass
class WorkerStats:
    """What this worker did, for logs and the summary line it writes when it stops."""

    consumed: int = 0
    scored: int = 0
    alerts: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    rekeyed: int = 0
    labels_learned: int = 0
    labels_unknown: int = 0
    labels_invalid: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)


def policy_from(settings: Settings) -> Policy:
    return Policy(settings.review_threshold, settings.decline_threshold,
                  settings.river_max_weight, settings.river_warmup_labels)


def _now_ms() -> int:
    return int(time.time() * 1000)


class StreamApp:
    """Builds the Faust app and holds what its agents share (scorer, stats)."""

    def __init__(self, settings: Settings, scorer: FraudScorer | None = None) -> None:
        self.settings = settings
        self.scorer = scorer or FraudScorer(
            OnnxScorer.load(settings.onnx_model_path or None), RiverScorer(), policy_from(settings))
        self.stats = WorkerStats()
        self.horizon_ms = settings.dedup_horizon_s * 1000
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=broker_url(s.bootstrap_servers, fetch_verified_offsets=s.fetch_verified_offsets),
            store="memory://",
            datadir=s.data_dir,
            topic_partitions=s.partitions,
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
            key_serializer="raw",
            value_serializer="raw",
            consumer_auto_offset_reset="earliest",
        )
        app.fetch_max_wait_ms = s.fetch_max_wait_ms  # read by stream_app.kafka.faust_transport
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                               "value_serializer": "raw"}
        self.transactions = app.topic(s.transactions_topic, s.rekeyed_topic, **raw)
        self.labels = app.topic(s.labels_topic, **raw)
        self.scores_in = app.topic(s.scores_topic, **raw)
        # use_partitioner: the changelog partition is the key's partition (murmur2 of card_id /
        # tx_id), i.e. the partition the event came from, also when a batch mixes partitions.
        self.cards = app.Table("cards", partitions=s.partitions, use_partitioner=True,
                               key_type=bytes, value_type=bytes, help="per-card feature state")
        self.captured = app.Table("captured-features", partitions=s.partitions, use_partitioner=True,
                                  key_type=bytes, value_type=bytes,
                                  help="feature vectors used at scoring time, until their label")
        app.agent(self.transactions, name="score")(self._score_agent)
        app.agent(self.scores_in, name="capture")(self._capture_agent)
        app.agent(self.labels, name="learn")(self._learn_agent)
        app.timer(30.0)(self._log_stats)
        return app

    # -- hot path ---------------------------------------------------------------------------------
    async def _score_agent(self, stream: faust.StreamT[bytes]) -> None:
        s = self.settings
        async for events in stream.take_events(s.batch_size, within=s.batch_window_ms / 1000):
            pending = self.process_batch(events)
            if pending:
                await asyncio.gather(*pending)

    def process_batch(self, events: list[faust.EventT]) -> list[Awaitable[Any]]:
        """Score a batch; returns the delivery futures the caller awaits before acknowledging."""
        s = self.settings
        self.stats.consumed += len(events)
        sends: list[Awaitable[Any]] = []
        states: dict[str, CardState] = {}
        txs: list[Transaction] = []
        rows: list[list[float]] = []
        sources: list[Source] = []
        for event in events:
            msg = event.message
            source = Source(msg.topic, msg.partition, msg.offset, int(msg.timestamp * 1000))
            raw = event.value
            try:
                tx = parse_transaction(raw, s.max_message_bytes)
                card_key = tx.card_id.encode()
                if event.key != card_key and msg.topic == s.transactions_topic:
                    sends.append(self._send(s.rekeyed_topic, card_key, raw))
                    self.stats.rekeyed += 1
                    continue
                if tx.card_id not in states:
                    stored = self.cards.get(card_key)
                    if stored is not None:
                        states[tx.card_id] = orjson.loads(stored)
                row = featurize(states, tx, self.horizon_ms)
            except DuplicateEvent:
                self.stats.duplicates += 1
                continue
            except InvalidEvent as exc:
                sends.append(self._dead_letter(raw, exc, source, event.key))
                continue
            txs.append(tx)
            rows.append(row)
            sources.append(source)
        for card_id, state in states.items():
            self.cards[card_id.encode()] = orjson.dumps(state)
        if txs:
            sends.extend(self._publish(self.scorer.score_many(txs, rows), sources))
        return sends

    def _publish(self, scored: list[Scored], sources: list[Source]) -> list[Awaitable[Any]]:
        s = self.settings
        now = _now_ms()
        sends = []
        for item, source in zip(scored, sources, strict=True):
            record = score_record(item, source, now)
            sends.append(self._send(s.scores_topic, item.tx.tx_id.encode(), orjson.dumps(record)))
            if item.is_alert:
                alert = alert_record(item, self.scorer.reasons, now)
                sends.append(self._send(s.alerts_topic, item.tx.card_id.encode(), orjson.dumps(alert)))
                self.stats.alerts += 1
        self.stats.scored += len(scored)
        return sends

    def _dead_letter(self, raw: bytes | None, exc: InvalidEvent, source: Source,
                     key: bytes | None) -> Awaitable[Any]:
        self.stats.dead_lettered += 1
        self.stats.dlq_reasons[exc.reason] = self.stats.dlq_reasons.get(exc.reason, 0) + 1
        log.debug("event.dead_lettered", reason=exc.reason, topic=source.topic,
                  partition=source.partition, offset=source.offset)
        record = dead_letter_record(raw, exc, source, key, _now_ms())
        return self._send(self.settings.dlq_topic, key, orjson.dumps(record))

    def _send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        return _delivered(self.app.producer.send(topic, key, value, None, None, None))

    # -- feedback path ----------------------------------------------------------------------------
    async def _capture_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(self.settings.batch_size, within=0.05):
            for event in events:
                try:
                    record = orjson.loads(event.value)
                    self.captured[event.key] = orjson.dumps(record["features"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("capture.unreadable_score_record", offset=event.message.offset)

    async def _learn_agent(self, stream: faust.StreamT[bytes]) -> None:
        from stream_app.features import FEATURE_NAMES  # local: the learn path is cold

        async for events in stream.take_events(self.settings.batch_size, within=0.05):
            for event in events:
                try:
                    label = orjson.loads(event.value)
                    tx_key = str(label["tx_id"]).encode()
                    is_fraud = {"fraud": True, "legit": False}[label["label"]]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.stats.labels_invalid += 1
                    continue
                stored = self.captured.get(tx_key)
                if stored is None:
                    self.stats.labels_unknown += 1
                    continue
                features = orjson.loads(stored)
                self.scorer.learn_one([features[n] for n in FEATURE_NAMES], is_fraud)
                del self.captured[tx_key]
                self.stats.labels_learned += 1

    async def _log_stats(self) -> None:
        log.info("worker.stats", **{k: v for k, v in vars(self.stats).items()},
                 river_version=self.scorer.river.version, onnx_version=self.scorer.onnx.version)


async def _delivered(send: Awaitable[Awaitable[Any]]) -> Any:
    """Faust's send returns once queued; the inner future resolves when the broker has the record."""
    return await (await send)


def create_app(settings: Settings | None = None) -> StreamApp:
    return StreamApp(settings or Settings.from_env())
