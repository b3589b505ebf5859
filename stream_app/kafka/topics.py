"""Explicit, idempotent topic creation.

Topics are always created up front with explicit configs: the embedded broker (Tansu) does not
auto-create topics through Metadata and only reports configs that were set explicitly, and on
Apache Kafka explicit partition counts keep co-partitioned topics aligned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from stream_app.kafka.security import client_kwargs
from stream_app.settings import Settings

_RETRY_S = 0.1


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partition count, replication factor and topic-level configs."""

    name: str
    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def catalogue(settings: Settings) -> list[TopicSpec]:
    """The topics the app creates (the one list of them): input, re-keyed, outputs, labels, dead letters,
    the examples log, and the rule sets with their audit trail. faust creates its changelog topics itself
    (``topic_allow_declare``)."""
    week = {"retention.ms": str(7 * 86400 * 1000)}
    s = settings
    names = (s.transactions_topic, s.rekeyed_topic, s.dlq_topic, s.scores_topic, s.alerts_topic, s.labels_topic,
             s.labels_rekeyed_topic, s.labels_dlq_topic)
    # The examples log has one partition: one order of examples, hence one model on every worker.
    examples = TopicSpec(s.examples_topic, 1, s.replication_factor,
                         config={"retention.ms": str(s.feature_retention_s * 1000)})
    # Rule sets: one partition (one order of versions), compacted (the latest set is kept); compaction deletes
    # earlier versions, so every change is also written to the audit topic, which is never compacted nor expired.
    rules = TopicSpec(s.rules_topic, 1, s.replication_factor, config={"cleanup.policy": "compact"})
    audit = TopicSpec(s.rules_audit_topic, 1, s.replication_factor,
                      config={"cleanup.policy": "delete", "retention.ms": "-1"})
    return [*(TopicSpec(n, s.partitions, s.replication_factor, config=week) for n in names), examples, rules, audit]


def create_topics(settings: Settings) -> None:
    """Create the catalogue's missing topics (idempotent), with the settings' security."""
    asyncio.run(ensure_topics(settings.bootstrap_servers, catalogue(settings), **client_kwargs(settings)))


async def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    *,
    timeout_s: float = 30,
    **client_kwargs: Any,
) -> None:
    """Create the topics that do not exist yet, then wait until Metadata shows them all with leaders.

    Existing topics are left as they are (idempotent). ``client_kwargs`` go to
    :class:`aiokafka.admin.AIOKafkaAdminClient` (security settings, client id, ...).
    Raises ``TimeoutError`` after ``timeout_s`` and the broker's error for any other
    creation failure.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout_s * 1000),
        **client_kwargs,
    )
    async with asyncio.timeout(timeout_s):
        await admin.start()
        try:
            await _create_missing(admin, specs)
            await _wait_listed(admin, {spec.name for spec in specs})
        finally:
            await admin.close()


async def _create_missing(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> None:
    existing = set(await admin.list_topics())
    new = [
        NewTopic(
            name=spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication,
            topic_configs=dict(spec.config),
        )
        for spec in specs
        if spec.name not in existing
    ]
    if not new:
        return
    response = await admin.create_topics(new)
    for topic, code, *_ in response.topic_errors:
        error = for_code(code)
        # A concurrent creator may have won the race since list_topics: that is success too.
        if code != 0 and error is not TopicAlreadyExistsError:
            raise error(f"creating topic {topic!r}")


async def _wait_listed(admin: AIOKafkaAdminClient, names: set[str]) -> None:
    """Poll Metadata for all topics (no names: that could auto-create on Apache Kafka)."""
    while True:
        ready = {
            t["topic"]
            for t in await admin.describe_topics()
            if t["error_code"] == 0
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
        }
        if names <= ready:
            return
        await asyncio.sleep(_RETRY_S)
