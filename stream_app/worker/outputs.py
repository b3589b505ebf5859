"""What the agents write: partition batches for the hot path, single sends, score / alert / dead-letter records."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import faust
import orjson
import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from stream_app.domain.entities import EntityTable
from stream_app.domain.events import InvalidEvent
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.records import (
    Source,
    alert_record,
    dead_letter_key,
    dead_letter_record,
    minimal_dead_letter_record,
    score_record,
)
from stream_app.domain.scoring import FraudScorer, Scored
from stream_app.kafka.batch_send import PartitionBatches, ensure_metadata
from stream_app.kafka.compat import raw_producer
from stream_app.settings import Settings
from stream_app.worker.metrics import Metrics, observe_many

log = structlog.get_logger("stream_app.worker")


def now_ms() -> int:
    return int(time.time() * 1000)


class Outputs:
    """The worker's writes to Kafka, through faust's producer (its delivery timeout and retries)."""

    def __init__(self, app: faust.App, settings: Settings, metrics: Metrics, pans: PanTokenizer,
                 scorer: FraudScorer, entities: EntityTable) -> None:
        self.app = app
        self.entities = entities  # personal entity ids go into score records as its digests
        self.scorer = scorer  # alerts explain themselves with its reasons
        self.settings = settings
        self.metrics = metrics
        self.pans = pans
        self.partitions: dict[str, list[int]] = {}  # of the topics written in partition batches

    async def fetch_metadata(self, *changelogs: str) -> None:
        """Partitions of every topic written in partition batches (outputs, examples, re-keyed events,
        the tables' changelogs), fetched once before an agent's first batch."""
        s = self.settings
        self.partitions.update(await ensure_metadata(
            raw_producer(self.app), s.scores_topic, s.alerts_topic, s.rekeyed_topic, s.examples_topic,
            s.labels_rekeyed_topic, *changelogs))

    def batches(self) -> PartitionBatches:
        return PartitionBatches(raw_producer(self.app), self.partitions)

    def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        """One record, confirmed when awaited (faust's send returns once queued; its inner future
        resolves when the broker has the record)."""
        return _delivered(self.app.producer.send(topic, key, value, None, None, None))

    def publish(self, scored: list[Scored], sources: list[Source], batches: PartitionBatches) -> None:
        """A score record for every scored transaction, an alert for the risky ones."""
        s, m = self.settings, self.metrics
        now = now_ms()
        for item, source in zip(scored, sources, strict=True):
            batches.add(s.scores_topic, item.tx.tx_id.encode(), self.score_bytes(item, source, now))
            if item.is_alert:
                self.add_alert(item, batches, now)
            if item.rules is not None:
                for hit in item.rules.hits:
                    m.rule_hits.labels(hit.rule_id, hit.mode).inc()
        m.scored.inc(len(scored))
        observe_many(m.latency.labels("message_timestamp"), [max(0.0, (now - x.timestamp_ms) / 1000) for x in sources])
        observe_many(m.latency.labels("event_time"), [max(0.0, (now - x.tx.ts_ms) / 1000) for x in scored])
        observe_many(m.risk, [x.risk for x in scored])

    def score_bytes(self, item: Scored, source: Source, now: int) -> bytes:
        """The score record, with the personal entities' digests that other workers' replicas read back."""
        return orjson.dumps(score_record(item, source, now, self.entities.personal_keys(item.tx)))

    def add_alert(self, item: Scored, batches: PartitionBatches, now: int) -> None:
        alert = alert_record(item, self.scorer.reasons, now)
        batches.add(self.settings.alerts_topic, item.tx.card_id.encode(), orjson.dumps(alert), card=True)
        self.metrics.alerts.labels(item.decision).inc()
        log.debug("alert.raised", tx_id=item.tx.tx_id, card_id=item.tx.card_id, decision=item.decision,
                  risk=round(item.risk, 4))

    async def dead_letter(self, topic: str, raw: bytes | None, exc: InvalidEvent, source: Source,
                          key: bytes | None) -> None:
        """Counted once the broker has it. A record the broker refuses as too large (a topic's
        max.message.bytes below the kept prefix) is published again without the original's bytes (size and
        digest kept): a poison message must not stop the worker on every restart."""
        log.debug("event.dead_lettered", reason=exc.reason, topic=source.topic,
                  partition=source.partition, offset=source.offset)
        record = dead_letter_record(raw, exc, source, key, now_ms(), self.pans, self.settings.dlq_original_max_bytes)
        out_key = dead_letter_key(key, self.pans)
        try:
            await self.send(topic, out_key, orjson.dumps(record))
        except Exception as error:
            if not too_large(error):
                raise
            log.warning("dead_letter.minimal", reason=exc.reason, topic=source.topic, partition=source.partition,
                        offset=source.offset, size=record["original_size"], error=repr(error))
            await self.send(topic, out_key, orjson.dumps(minimal_dead_letter_record(record)))
        self.metrics.dead_lettered.labels(topic, exc.reason).inc()


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (faust wraps aiokafka's errors in ProducerSendError)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)  # type: ignore[arg-type]
    return chain


def too_large(exc: BaseException) -> bool:
    return any(isinstance(e, MessageSizeTooLargeError | RecordTooLargeError) for e in causes(exc))


def failure_hint(exc: BaseException) -> str:
    """What to fix, for the errors a restart would only repeat."""
    names = " ".join(type(e).__name__ for e in causes(exc))
    if "AuthorizationFailed" in names:
        return "grant the worker's principal Write (and Describe) on the output and dead-letter topics"
    if too_large(exc):
        return ("raise the topic's max.message.bytes, or lower STREAM_APP_PRODUCER_BATCH_BYTES (batches of records) "
                "or STREAM_APP_DLQ_ORIGINAL_MAX_BYTES (a dead letter's copy of its message)")
    if "KafkaTimeoutError" in names or "RequestTimedOut" in names:
        return "the broker did not confirm within STREAM_APP_DELIVERY_TIMEOUT_S: check that it is reachable"
    return "see the error; the worker's input is read again after the restart"


async def _delivered(send: Awaitable[Awaitable[Any]]) -> Any:
    return await (await send)
