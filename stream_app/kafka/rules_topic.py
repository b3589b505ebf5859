"""Publishing a rule set: the audit record first, then the rule set on the compacted ``rules`` topic.

The audit topic keeps every change (compaction of ``rules`` deletes earlier versions). Written first, so a
change that reached the workers is always in the audit trail; an audit record whose version never appears on
``rules`` (the command then fails and says so) is a change that was not applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stream_app.domain.rules import Published, RuleError
from stream_app.kafka.topic_reader import TopicRange, read_topic

RULES_KEY = b"rules"  # one key: compaction keeps the latest rule set


def history(bootstrap: str, topic: str, client_kwargs: Mapping[str, Any] | None = None) -> list[Published]:
    """The rule-set records ``topic`` still holds, oldest first (what is not a rule-set record is skipped)."""
    out = []
    for _, value in read_topic(bootstrap, topic, TopicRange(), client_kwargs=client_kwargs):
        try:
            out.append(Published.from_bytes(value))
        except RuleError:
            continue
    return out


def publish(bootstrap: str, rules_topic: str, audit_topic: str, published: Published, audit: Mapping[str, Any],
            client_kwargs: Mapping[str, Any] | None = None) -> None:
    """Both records, each confirmed by the broker (acks=all) before the next is sent."""
    asyncio.run(_publish(bootstrap, rules_topic, audit_topic, published, dict(audit), dict(client_kwargs or {})))


async def _publish(bootstrap: str, rules_topic: str, audit_topic: str, published: Published, audit: dict[str, Any],
                   client_kwargs: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_kwargs)
    await producer.start()
    try:
        await producer.send_and_wait(audit_topic, orjson.dumps(audit), key=str(published.version).encode())
        await producer.send_and_wait(rules_topic, published.to_bytes(), key=RULES_KEY)
    finally:
        await producer.stop()
