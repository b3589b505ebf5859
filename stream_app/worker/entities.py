"""Every worker's replica of the entity table (merchant profiles, label-derived risk).

A merchant's transactions come from every card, so from every partition: its profile cannot live in a
card's partition. Each worker keeps a full replica (docs/concepts/entities.md, the design record), fed by:

* its own scored transactions, applied at once (:meth:`EntityReplica.observe_local`), so events of a
  micro-batch see each other as they do in training;
* the ``scores`` topic, all partitions (each transaction is scored once there, also across crashes: the
  delivery protocol repairs missing scores; a score published twice, which that protocol bounds but cannot
  rule out without transactions, is counted twice), for what other workers scored — minus the
  transactions this worker applied locally (remembered by tx_id until their score record comes by);
* the examples log (labels joined with their transaction's entity ids), applied by the learner in log
  order (:meth:`EntityReplica.learn`) — the same order on every worker, like the online model.

The replica is checkpointed with the online models (same offset of the examples log, plus the scores
offsets and the locally applied tx_ids still pending): after a restart it resumes from there.
Staleness: another worker's transaction reaches this replica one produce-and-fetch later
(``stream_app_entity_lag_seconds``); labels, one examples-log round trip later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import structlog
from aiokafka import TopicPartition

from stream_app.domain.entities import EntityTable, LabelArrival, Observation, parse_entities
from stream_app.domain.events import InvalidEvent, Transaction, parse_ts
from stream_app.domain.learning import Example
from stream_app.kafka.security import KafkaSecurity
from stream_app.kafka.topic_reader import at_end, log_follower, partitions_of
from stream_app.settings import Settings
from stream_app.worker.metrics import Metrics
from stream_app.worker.outputs import now_ms

log = structlog.get_logger("stream_app.worker")
REPLICA_FETCH_RECORDS = 500


@dataclass(slots=True)
class ReplicaState:
    """What a checkpoint keeps: the table, the scores offsets applied, the local tx_ids not read back yet."""

    table: EntityTable = field(default_factory=EntityTable)
    offsets: dict[int, int] = field(default_factory=dict)  # scores partition -> last offset applied
    pending: set[str] = field(default_factory=set)


def observation_of(record: dict[str, Any], table: EntityTable) -> Observation:
    """A score record read back as an observation: the merchant's id, and the personal entities' digests
    (``entities``); raises KeyError/TypeError/ValueError/InvalidEvent."""
    personal = record.get("entities") or {}
    keys: dict[str, str] = {}
    for spec in table.specs:
        key = record.get(spec.field) if spec.field == "merchant_id" else personal.get(spec.name)
        if key not in (None, ""):
            keys[spec.name] = str(key)
    return Observation(str(record["card_id"]), parse_ts(record["event_time"], "event_time"),
                       float(record["features"]["amount_eur"]), keys)


class EntityReplica:
    """The worker's entity table and the consumer of the ``scores`` topic that keeps it current."""

    def __init__(self, settings: Settings, metrics: Metrics, security: KafkaSecurity, secret: bytes = b"") -> None:
        self.settings = settings
        self.metrics = metrics
        self.security = security
        self.secret = secret
        self.state = ReplicaState(EntityTable(parse_entities(settings.entities), secret=secret))
        self._outcomes = {outcome: metrics.entity_records.labels(outcome)
                          for outcome in ("applied", "own", "already_applied", "unreadable")}
        self.caught_up = asyncio.Event()  # the scores topic read to its end once (the door process's readiness)

    def snapshot(self) -> ReplicaState:
        """What a checkpoint keeps: the state without the key of the digests (checkpoints are files)."""
        return replace(self.state, table=replace(self.state.table, secret=b""))

    def restore(self, state: ReplicaState) -> None:
        self.state = replace(state, table=replace(state.table.upgraded(), secret=self.secret))

    @property
    def table(self) -> EntityTable:
        return self.state.table

    def observe_local(self, tx: Transaction) -> None:
        """This worker scored ``tx``: apply it now, and skip its score record when it comes by."""
        self.state.table.observe(self.state.table.observation(tx))
        self.state.pending.add(tx.tx_id)

    def learn(self, example: Example) -> None:
        """An example from the examples log; one without entity ids (an older worker's) teaches only the models."""
        if example.entity is None:
            return
        try:
            label = LabelArrival.from_dict(example.entity, example.label_ts_ms, example.is_fraud)
        except (KeyError, TypeError, ValueError):
            log.warning("entities.unreadable_label", tx_id=example.tx_id)
            return
        self.state.table.learn(label)

    def apply_record(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Fold another worker's score record in. Every record is counted by outcome, so that a replica's view
        can be reconciled with the topic (records read = applied + own + already applied + unreadable)."""
        if offset <= self.state.offsets.get(partition, -1):
            self._outcomes["already_applied"].inc()  # before the checkpoint this replica resumed from
            return
        self.state.offsets[partition] = offset
        # Score records are keyed by tx_id: the key tells this worker's own (folded when scored) without parsing.
        if key is not None and self._own(key.decode(errors="replace")):
            return
        try:
            record = orjson.loads(value or b"")
            if self._own(str(record["tx_id"])):
                return
            self.state.table.observe(observation_of(record, self.state.table))
        except (KeyError, TypeError, ValueError, InvalidEvent):  # orjson's decode error is a ValueError
            self._outcomes["unreadable"].inc()
            return
        self._outcomes["applied"].inc()

    def _own(self, tx_id: str) -> bool:
        """Whether ``tx_id`` was scored and folded here (its record is then skipped, once)."""
        if tx_id not in self.state.pending:
            return False
        self.state.pending.discard(tx_id)
        self._outcomes["own"].inc()
        return True

    async def run(self) -> None:
        """Follow every partition of the scores topic from the checkpoint's offsets (the start without one)."""
        s = self.settings
        consumer = log_follower(s, self.security)
        await consumer.start()
        try:
            partitions = await partitions_of(consumer, s.scores_topic)
            tps = [TopicPartition(s.scores_topic, p) for p in partitions]
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in self.state.offsets:
                    consumer.seek(tp, self.state.offsets[tp.partition] + 1)
                else:
                    await consumer.seek_to_beginning(tp)
            while True:
                # Small fetches, and the loop given back between partitions: folding is synchronous, and the
                # worker's scoring and HTTP share this event loop (benchmarks/throughput.py p99 at half the maximum
                # rate: 570-710 ms with 5,000-record fetches, 285 ms with 500, 189 ms without the replica).
                batches = await consumer.getmany(*tps, timeout_ms=500, max_records=REPLICA_FETCH_RECORDS)
                for tp, messages in batches.items():
                    for i, message in enumerate(messages):
                        if i and not i % s.batch_slice:
                            await asyncio.sleep(0)
                        self.apply_record(tp.partition, message.offset, message.key, message.value)
                    if messages:
                        self.metrics.entity_lag.set(max(0.0, (now_ms() - messages[-1].timestamp) / 1000))
                    await asyncio.sleep(0)
                self.metrics.entity_profiles.set(len(self.state.table.profiles))
                if not self.caught_up.is_set() and await at_end(consumer, tps):
                    self.caught_up.set()
        finally:
            await consumer.stop()

    def expire(self) -> None:
        gone = self.state.table.expire()
        if gone:
            log.info("entities.expired", profiles_and_cards=gone)
