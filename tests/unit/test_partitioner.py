"""The domain's murmur2 is Kafka's: equal to aiokafka's (the client the worker produces with) on any key."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from stream_app.domain.partitioner import kafka_partition, murmur2


@given(st.binary(max_size=64))
def test_murmur2_equals_aiokafkas(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1000))
def test_partition_is_the_default_partitioners(key: bytes, partitions: int) -> None:
    assert kafka_partition(key, partitions) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions


def test_a_known_value() -> None:
    # Kafka's own test vector (UtilsTest.testMurmur2): "21" -> -973932308 as a signed int
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF
