"""The learner: every worker applies the examples log, in order, to its own online models, and
checkpoints them (a restart resumes from the checkpoint's offset instead of relearning the log)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from stream_app.domain.learning import Example, OnlineLearner
from stream_app.domain.scoring import FraudScorer
from stream_app.kafka.security import KafkaSecurity
from stream_app.kafka.topic_reader import at_end, log_follower
from stream_app.models import checkpoint
from stream_app.settings import Settings
from stream_app.worker.entities import EntityReplica
from stream_app.worker.metrics import Metrics
from stream_app.worker.outputs import now_ms

log = structlog.get_logger("stream_app.worker")


class Learner:
    """The examples-log consumer and the checkpoints of the models it teaches."""

    def __init__(self, settings: Settings, metrics: Metrics, scorer: FraudScorer, learner: OnlineLearner,
                 entities: EntityReplica, security: KafkaSecurity) -> None:
        self.settings = settings
        self.metrics = metrics
        self.scorer = scorer
        self.learner = learner
        self.entities = entities
        self.security = security
        self.checkpoint_dir = Path(settings.data_dir) / "checkpoints"
        self.checkpoint_key = settings.checkpoint_key.encode() or None
        self._checkpointed_offset = -1
        self.caught_up = asyncio.Event()  # the examples log read to its end once (the door process's readiness)

    async def run(self) -> None:
        """Apply the examples log from the checkpoint's offset on (from the start without one)."""
        s = self.settings
        tp = TopicPartition(s.examples_topic, 0)
        consumer = log_follower(s, self.security)
        await consumer.start()
        try:
            consumer.assign([tp])
            if self.learner.offset >= 0:
                consumer.seek(tp, self.learner.offset + 1)
            else:
                await consumer.seek_to_beginning(tp)
            while True:
                batches = await consumer.getmany(tp, timeout_ms=500, max_records=2000)
                messages = batches.get(tp, [])
                for start in range(0, len(messages), s.batch_slice):
                    if start:  # learning is synchronous: let HTTP and scoring in between
                        await asyncio.sleep(0)
                    self.apply(messages[start:start + s.batch_slice])
                if not self.caught_up.is_set() and await at_end(consumer, [tp]):
                    self.caught_up.set()
        finally:
            await consumer.stop()

    def apply(self, messages: list[ConsumerRecord]) -> None:  # type: ignore[type-arg]
        """One slice of the examples log: the entity replica learns each new example, the models the slice."""
        examples: list[tuple[Example, int]] = []
        for message in messages:
            try:
                example = Example.from_bytes(message.value)
            except (ValueError, KeyError, TypeError):  # orjson's decode error is a ValueError
                log.warning("learner.unreadable_example", offset=message.offset)
                continue
            if message.offset > self.learner.offset:  # not in the checkpoint restored
                self.entities.learn(example)
            examples.append((example, message.offset))
        skipped = self.learner.other_feature_set
        self.learner.apply_many(examples)
        now_skipped = self.learner.other_feature_set
        if now_skipped > skipped and (skipped == 0 or now_skipped // 1000 > skipped // 1000):  # first, every 1000th
            log.warning("learner.other_feature_set", offset=messages[-1].offset, examples=now_skipped,
                        model_width=len(self.learner.river.names))
        self.metrics.examples_applied.inc(len(examples))
        if messages:
            self.metrics.label_lag.set(max(0.0, (now_ms() - messages[-1].timestamp) / 1000))

    def restore_checkpoint(self) -> None:
        ckpt, refused = checkpoint.latest(self.checkpoint_dir, self.checkpoint_key)
        for reason in refused:
            log.error("checkpoint.refused", reason=reason)
        if ckpt is None:
            log.info("checkpoint.none", directory=str(self.checkpoint_dir))
            return
        river, stacker, *entities = ckpt.state  # (river, stacker[, entity replica]): older ones have no replica
        try:
            self.scorer.adopt(river, stacker)
        except ValueError as exc:  # STREAM_APP_ENTITIES changed since it was written: start afresh
            log.error("checkpoint.other_feature_set", reason=str(exc), version=ckpt.version)
            return
        if entities:
            self.entities.restore(entities[0])
        self.learner.river, self.learner.stacker = self.scorer.river, self.scorer.stacker
        self.learner.offset = ckpt.offset
        log.info("checkpoint.restored", version=ckpt.version, offset=ckpt.offset)

    async def save_checkpoint(self) -> None:
        if self.learner.offset < 0 or self.learner.offset == self._checkpointed_offset:
            return
        state = (self.learner.river, self.learner.stacker, self.entities.snapshot())
        path = checkpoint.save(self.checkpoint_dir, self.scorer.river.version, self.learner.offset, state,
                               self.checkpoint_key)
        self._checkpointed_offset = self.learner.offset
        self.metrics.checkpoint_time.set(time.time())
        log.info("checkpoint.saved", version=self.scorer.river.version, offset=self.learner.offset,
                 path=str(path))
