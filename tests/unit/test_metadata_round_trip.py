"""A follower's first metadata round trip survives a broker that does not answer for a moment, within a bound."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka.errors import KafkaError

from stream_app.kafka.topic_reader import metadata_round_trip


class Broker:
    """A consumer's metadata call that fails ``failures`` times first (a broker restarting)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def topics(self) -> set[str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaError("Unable to get cluster metadata over all known brokers")
        return {"scores"}


def test_asks_again_until_the_broker_answers() -> None:
    broker = Broker(failures=2)
    asyncio.run(metadata_round_trip(cast(Any, broker), wait_s=5))
    assert broker.calls == 3


def test_gives_up_after_the_bound() -> None:
    broker = Broker(failures=10**6)
    with pytest.raises(KafkaError):
        asyncio.run(metadata_round_trip(cast(Any, broker), wait_s=0.6))
    assert 2 <= broker.calls <= 4
