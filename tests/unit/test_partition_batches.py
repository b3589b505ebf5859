"""batch_send without a broker: records land in the partition ``send`` would choose, one batch per partition
(more when one fills up), table writes become changelog records; the broker-side run is
tests/integration/test_batch_send.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer

from stream_app.domain.partitioner import kafka_partition
from stream_app.kafka.batch_send import BatchedTable, PartitionBatches, delivered, ensure_metadata

KEYS = [f"card-{i}".encode() for i in range(100)]


class Sent:
    """Stands in for ``AIOKafkaProducer.send_batch``: records what was handed over, delivers at once."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, int]] = []  # topic, partition, records

    async def __call__(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.batches.append((topic, partition, batch.record_count()))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _producer(**kwargs: Any) -> tuple[AIOKafkaProducer, Sent]:
    producer = AIOKafkaProducer(bootstrap_servers="localhost:1", **kwargs)
    sent = Sent()
    producer.send_batch = sent  # type: ignore[method-assign]
    return producer, sent


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_records_go_where_send_would_put_them_one_batch_per_partition() -> None:
    async def scenario() -> tuple[list[tuple[str, int, int]], int]:
        producer, sent = _producer()
        batches = PartitionBatches(producer, {"scores": [0, 1, 2, 3], "alerts": [0, 1]})
        for key in KEYS:
            batches.add("scores", key, b"v")
        batches.add("alerts", b"card-1", b"a", partition_key=b"card-7")
        pending = batches.records
        await delivered(batches.send())
        await producer.stop()
        return sent.batches, pending

    handed, pending = _run(scenario())
    want = Counter(kafka_partition(k, 4) for k in KEYS)
    assert pending == len(KEYS) + 1
    assert sorted(b for b in handed if b[0] == "scores") == sorted(("scores", p, n) for p, n in want.items())
    assert [b for b in handed if b[0] == "alerts"] == [("alerts", kafka_partition(b"card-7", 2), 1)]


def test_a_full_batch_starts_another_and_send_empties_the_collection() -> None:
    async def scenario() -> tuple[list[tuple[str, int, int]], int, list[Any]]:
        producer, sent = _producer(max_batch_size=300)
        batches = PartitionBatches(producer, {"t": [0]})
        for i in range(10):
            batches.add("t", f"k{i}".encode(), b"x" * 100)
        await delivered(batches.send())
        left, again = batches.records, await batches.send()
        await producer.stop()
        return sent.batches, left, again

    handed, left, again = _run(scenario())
    assert sum(n for _, _, n in handed) == 10 and len(handed) > 1 and all(p == 0 for _, p, _ in handed)
    assert left == 0 and again == []


def test_unknown_partitions_are_an_error_not_a_guess() -> None:
    async def scenario() -> None:
        producer, _ = _producer()
        with pytest.raises(LookupError, match="call ensure_metadata first"):
            PartitionBatches(producer).add("nowhere", b"k", b"v")
        await producer.stop()

    _run(scenario())


def test_ensure_metadata_sorts_each_topics_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> dict[str, list[int]]:
        producer, _ = _producer()

        async def wait_on_metadata(topic: str) -> set[int]:
            return {"a": {2, 0, 1}, "b": {0}}[topic]

        monkeypatch.setattr(producer.client, "_wait_on_metadata", wait_on_metadata)
        partitions = await ensure_metadata(producer, "a", "b")
        await producer.stop()
        return partitions

    assert _run(scenario()) == {"a": [0, 1, 2], "b": [0]}


def test_batched_table_writes_the_store_and_its_changelog() -> None:
    async def scenario() -> tuple[dict[bytes, bytes], list[tuple[str, int, int]], BatchedTable]:
        app = faust.App("batch-test", store="memory://")
        table = app.Table("cards", key_type=bytes, value_type=bytes, partitions=4)
        producer, sent = _producer()
        topic = table.changelog_topic.get_topic_name()
        batches = PartitionBatches(producer, {topic: [0, 1, 2, 3]})
        view = BatchedTable(table, batches, partition_key=lambda key: key.split(b"|")[0])
        view[b"card-1|tx-1"] = b"state-1"
        view[b"card-2|tx-2"] = b"state-2"
        del view[b"card-1|tx-1"]
        await delivered(batches.send())
        await producer.stop()
        return dict(table.data), sent.batches, view

    data, handed, view = _run(scenario())
    assert data == {b"card-2|tx-2": b"state-2"} and dict(view) == data and len(view) == 1
    # three changelog records (two writes, one tombstone), partitioned by the card part of the key
    want = Counter(kafka_partition(card, 4) for card in (b"card-1", b"card-2", b"card-1"))
    assert sorted(handed) == sorted((view.topic, p, n) for p, n in want.items())
