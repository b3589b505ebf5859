"""Kafka's default partitioner (the Java client's, aiokafka's, faust's, kafkajs's): murmur2 of the key.

Here, in the domain, because where a card's state lives is a decision of the core (see
:func:`stream_app.domain.ingress.card_partition`), which must not import a Kafka client; a test checks it
against aiokafka's own murmur2.
"""

from __future__ import annotations

import struct
from functools import lru_cache

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's ``Utils.murmur2`` computes it (seed 0x9747b28c), unsigned 32-bit."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=1 << 15)  # murmur2 is pure Python (~3.5 µs a key); a card's next events hit the cache
def card_partition(card_key: bytes, partitions: int) -> int:
    """:func:`kafka_partition` of a key that comes back (a card's: its events, state and captured vectors)."""
    return kafka_partition(card_key, partitions)
