"""The card states of every partition, followed from the cards table's changelog (read only)."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.kafka.compat import changelog_topic
from stream_app.kafka.security import KafkaSecurity
from stream_app.kafka.topic_reader import at_end, log_follower
from stream_app.settings import Settings
from stream_app.worker.delivery import CARDS_TABLE
from stream_app.worker.metrics import Metrics
from stream_app.worker.outputs import now_ms

FETCH_RECORDS = 2000
log = structlog.get_logger("stream_app.door")


class CardReplica:
    """``states``: card id (bytes) -> the stored value, as the worker's table holds it; a tombstone deletes."""

    def __init__(self, settings: Settings, metrics: Metrics, security: KafkaSecurity) -> None:
        self.settings = settings
        self.metrics = metrics
        self.security = security
        self.topic = changelog_topic(settings.app_id, CARDS_TABLE)
        self.states: dict[bytes, bytes] = {}
        self.caught_up = asyncio.Event()  # every partition read to its end once

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return  # the worker keys every change by its card
        if value is None:
            self.states.pop(key, None)
        else:
            self.states[key] = value

    async def _wait_for_topic(self, consumer: AIOKafkaConsumer) -> None:
        """faust creates the changelog when the first worker starts: a door may start before it."""
        waiting = False
        while self.topic not in await consumer.topics():  # a metadata round trip each
            if not waiting:
                log.warning("door.waiting_for_changelog", topic=self.topic, hint="start a worker of this app id")
                waiting = True
            await asyncio.sleep(0.5)

    async def run(self) -> None:
        """Follow every partition of the changelog from its start."""
        consumer = log_follower(self.settings, self.security)
        await consumer.start()
        try:
            await self._wait_for_topic(consumer)
            # faust makes a table's changelog with the table's partitions (and refuses to start otherwise)
            tps = [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=500, max_records=FETCH_RECORDS)
                for messages in batches.values():
                    for message in messages:  # a dict update each: no slices needed between them
                        self.apply(message.key, message.value)
                    if messages:
                        self.metrics.card_replica_lag.set(max(0.0, (now_ms() - messages[-1].timestamp) / 1000))
                    await asyncio.sleep(0)
                self.metrics.cards.set(len(self.states))
                if not self.caught_up.is_set() and await at_end(consumer, tps):
                    self.caught_up.set()
        finally:
            await consumer.stop()
