"""Every worker follows the ``rules`` topic: all of it from the beginning at start, then each new rule set.

The topic has one partition, compacted: the last record is the rule set in force. Each record is validated and
compiled (:class:`stream_app.domain.rules.RulesSlot`); a refused one is logged (``rules.refused``) and counted,
and the set serving before it keeps serving. A new set applies from the scorer's next micro-batch, on the stream
and on ``POST /score`` alike. The score agent waits for the topic to be read to its end before its first batch
(at most ``RULES_CATCH_UP_S``), so a restarted worker does not score its first events without the rules.
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import TopicPartition

from stream_app.domain.scoring import FraudScorer
from stream_app.kafka.security import KafkaSecurity
from stream_app.kafka.topic_reader import at_end, log_follower, metadata_round_trip
from stream_app.settings import Settings
from stream_app.worker.metrics import Metrics
from stream_app.worker.outputs import now_ms

log = structlog.get_logger("stream_app.worker")
RULES_CATCH_UP_S = 30.0


class RulesFollower:
    """The consumer of the ``rules`` topic that keeps the scorer's rule set current."""

    def __init__(self, settings: Settings, metrics: Metrics, scorer: FraudScorer, security: KafkaSecurity) -> None:
        self.settings = settings
        self.metrics = metrics
        self.scorer = scorer
        self.security = security
        self.caught_up = asyncio.Event()

    def apply(self, offset: int, value: bytes | None) -> None:
        change = self.scorer.rules.apply(value, self.scorer.features.names, now_ms())
        if change.ok:
            rule_set = self.scorer.rules.current
            assert rule_set is not None
            self.metrics.rules_updates.labels("applied").inc()
            self.metrics.rules_version.set(float(rule_set.version))
            log.info("rules.applied", version=rule_set.version, rules=len(rule_set.rules), offset=offset,
                     published_by=change.published_by, sha256=rule_set.sha256)
        else:
            self.metrics.rules_updates.labels("refused").inc()
            serving = self.scorer.rules.current
            log.error("rules.refused", version=change.version, offset=offset, error=change.error,
                      published_by=change.published_by, serving=None if serving is None else serving.version)

    async def wait_caught_up(self) -> None:
        """Until the topic has been read to its end once (bounded: a missing or unreadable topic must not stop
        scoring; it is logged)."""
        try:
            await asyncio.wait_for(self.caught_up.wait(), RULES_CATCH_UP_S)
        except TimeoutError:
            log.warning("rules.not_caught_up", topic=self.settings.rules_topic, waited_s=RULES_CATCH_UP_S,
                        effect="scoring starts with the rule set read so far")

    async def run(self) -> None:
        s = self.settings
        tp = TopicPartition(s.rules_topic, 0)
        consumer = log_follower(s, self.security)
        await consumer.start()
        try:
            await metadata_round_trip(consumer)
            if not consumer.partitions_for_topic(s.rules_topic):
                log.error("rules.topic_missing", topic=s.rules_topic, effect="no rules until the topic exists",
                          hint="create the app's topics: stream-app topics")
                self.caught_up.set()
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                batches = await consumer.getmany(tp, timeout_ms=500, max_records=100)
                for message in batches.get(tp, []):
                    self.apply(message.offset, message.value)
                if not self.caught_up.is_set() and await at_end(consumer, [tp]):
                    self.caught_up.set()
                    current = self.scorer.rules.current
                    log.info("rules.ready", version=None if current is None else current.version)
        finally:
            self.caught_up.set()
            await consumer.stop()
