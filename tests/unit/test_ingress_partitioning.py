"""Card partitions: a message is used where it is read only when both its key and its partition are its
card's (murmur2, Kafka's default partitioner); everything else on the input topics is re-keyed, and a
re-key topic's message outside its card's partition is dead-lettered, never forwarded again."""

from __future__ import annotations

import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtests.chaos import PARTITIONERS
from stream_app.domain.events import parse_label, parse_transaction
from stream_app.domain.ingress import Ingress, capture_key, card_partition, join_label
from stream_app.domain.pan import PanTokenizer

PANS = PanTokenizer(b"k" * 32)
P = 4
INGRESS = Ingress(16384, 7 * 86_400_000, PANS, "transactions", P)
TX = {"tx_id": "tx-1", "card_id": "card_0042", "merchant_id": "m_1", "amount": 12.5, "currency": "EUR",
      "timestamp": "2026-01-01T10:00:00Z", "country": "FR", "channel": "pos", "mcc": "5411"}
LABEL = {"tx_id": "tx-1", "card_id": "card_0042", "label": "fraud", "source": "analyst",
         "label_time": "2026-01-02T10:00:00Z"}

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (Java ints); Java's default partitioner uses
# Utils.toPositive(murmur2(key)) % numPartitions, i.e. (h & 0x7fffffff) % n.
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}


@pytest.mark.parametrize("key,java", JAVA_MURMUR2.items())
@pytest.mark.parametrize("partitions", [1, 3, 4, 12, 100])
def test_card_partition_is_the_java_clients_default_partition(key: bytes, java: int, partitions: int) -> None:
    assert card_partition(key, partitions) == (java & 0x7FFFFFFF) % partitions


def test_card_partition_pinned_values() -> None:
    """Literal partitions (P=4) of the Java vectors: a change of hash or of sign handling shows here."""
    assert [card_partition(k, 4) for k in JAVA_MURMUR2] == [0, 2, 0, 3, 1, 3]


def test_card_partition_agrees_with_the_worker_producers_partitioner() -> None:
    """The worker writes changelogs and the re-key topics with aiokafka's DefaultPartitioner."""
    from aiokafka.partitioner import DefaultPartitioner

    for i in range(500):
        key = f"card_{i:05d}".encode()
        assert DefaultPartitioner()(key, list(range(6)), list(range(6))) == card_partition(key, 6)


def test_load_partitioners_match_the_clients_definitions() -> None:
    """crc32: librdkafka's consistent_random (rd_crc32(key) % partition_cnt; CRC-32 check value
    0xCBF43926 for "123456789"); fnv1a: sarama's hash partitioner (int32(fnv1a_32) % n, negated when < 0;
    FNV-1a 32 of "a" is 0xE40C292C, of "foobar" 0xBF9CF968)."""
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert PARTITIONERS["crc32"](b"123456789", 1000) == 0xCBF43926 % 1000
    assert PARTITIONERS["fnv1a"](b"a", 1000) == (2**32 - 0xE40C292C) % 1000  # int32 is negative: negated
    assert PARTITIONERS["fnv1a"](b"foobar", 1000) == (2**32 - 0xBF9CF968) % 1000
    assert PARTITIONERS["murmur2"](b"21", 1000) == (-973932308 & 0x7FFFFFFF) % 1000
    cards = [f"card_{i:04d}".encode() for i in range(200)]
    for a, b in (("murmur2", "crc32"), ("murmur2", "fnv1a")):
        assert sum(PARTITIONERS[a](c, P) != PARTITIONERS[b](c, P) for c in cards) > 100  # they disagree


def _card_key() -> bytes:
    return parse_transaction(orjson.dumps(TX), pans=PANS).card_id.encode()


def test_transaction_in_another_partition_than_its_cards_is_rekeyed_even_when_keyed_by_card() -> None:
    key = _card_key()
    home = card_partition(key, P)
    raw = orjson.dumps(TX)
    assert INGRESS(raw, key, "transactions", {}, lambda _c: None, partition=home).kind == "scored"
    for other in set(range(P)) - {home}:
        out = INGRESS(raw, key, "transactions", {}, lambda _c: None, partition=other)
        assert out.kind == "rekeyed" and out.forward is not None and out.tx is not None
    assert INGRESS(raw, b"tx-1", "transactions", {}, lambda _c: None, partition=home).kind == "rekeyed"
    # no partition (HTTP, batch): only the key matters
    assert INGRESS(raw, key, "transactions", {}, lambda _c: None, partition=None).kind == "scored"


def test_rekey_topic_message_outside_its_cards_partition_is_dead_lettered_not_forwarded_again() -> None:
    key = _card_key()
    home = card_partition(key, P)
    raw = orjson.dumps(TX)
    assert INGRESS(raw, key, "transactions.by-card", {}, lambda _c: None, partition=home).kind == "scored"
    other = (home + 1) % P
    out = INGRESS(raw, key, "transactions.by-card", {}, lambda _c: None, partition=other)
    assert out.kind == "dead_lettered" and out.error is not None and out.error.reason == "misrouted"
    assert "card_0042" not in str(out.error)  # the detail names partitions, not the card


def _join(topic: str, partition: int, key: bytes | None, captured: dict[bytes, bytes] | None = None,
          partitions: int | None = P) -> str:
    return join_label(orjson.dumps(LABEL), key, (topic, partition, 7), 1, max_bytes=4096, pans=PANS,
                      captured={} if captured is None else captured, parked={}, input_topic="labels",
                      partitions=partitions).kind


def test_label_in_another_partition_than_its_cards_is_rekeyed() -> None:
    card = parse_label(orjson.dumps(LABEL), pans=PANS).card_id
    key = card.encode()
    home = card_partition(key, P)
    assert _join("labels", home, key) == "parked"
    assert {_join("labels", p, key) for p in set(range(P)) - {home}} == {"rekeyed"}
    assert _join("labels", (home + 1) % P, key, partitions=None) == "parked"  # no partition check asked
    assert _join("labels.by-card", home, key) == "parked"
    assert _join("labels.by-card", (home + 1) % P, key) == "dead_lettered"
    captured = {capture_key(card, "tx-1"): b"L"}
    assert _join("labels", home, key, captured) == "duplicate"


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=40),
       st.one_of(st.none(), st.binary(max_size=12)), st.sampled_from(["transactions", "transactions.by-card"]),
       st.one_of(st.none(), st.integers(0, P - 1)), st.sampled_from(sorted(PARTITIONERS)))
def test_a_message_is_used_in_place_only_in_its_cards_partition(card: str, key: bytes | None, topic: str,
                                                                 partition: int | None, partitioner: str) -> None:
    """Whatever key, topic, partition or producer partitioner: scored only where the card's state is."""
    raw = orjson.dumps({**TX, "card_id": card})
    card_key = parse_transaction(raw, pans=PANS).card_id.encode()
    for k, p in ((key, partition), (card_key, PARTITIONERS[partitioner](card_key, P))):
        out = INGRESS(raw, k, topic, {}, lambda _c: None, partition=p)
        home = p is None or p == card_partition(card_key, P)
        if topic == "transactions":
            assert out.kind == ("scored" if home and k == card_key else "rekeyed")
        else:
            assert out.kind == ("scored" if home else "dead_lettered")
