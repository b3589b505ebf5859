"""`stream-app batch --from-topic` on a real broker: offset and time ranges, malformed messages, and the
same answers as scoring the same transactions from a file."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from outputs import produce

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.events import format_ts
from stream_app.kafka.topic_reader import TopicRange, read_topic
from stream_app.offline.batch import errors_path, load_scorer, read_file, run
from stream_app.settings import Settings

PARTITIONS = 2
MALFORMED = [(b"card_bad", b"not json"), (b"card_bad", b'{"tx_id": "no-card"}')]
RESULT = re.compile(r"RESULT rows=(\d+) scored=(\d+) errors=(\d+) duplicates=(\d+) seconds=[\d.]+ rows_per_s=\d+")


def messages(seed: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(tx.card_id.encode(), tx.to_bytes())
            for tx in (item.tx for item in simulate(GeneratorConfig(seed=seed, n_customers=200), days=2))][:n]


def batch(bootstrap: str, data_dir: Path, topic: str, output: Path, *bounds: str) -> tuple[int, ...]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "STREAM_APP_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "batch", "--from-topic", topic,
                           "--output", str(output), *bounds], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "river=river-logreg@0" in proc.stdout
    match = RESULT.fullmatch(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout
    return tuple(map(int, match.groups()))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def same_as_from_a_file(tmp_path: Path, values: list[bytes], output: Path) -> None:
    """The topic's rows, scored from a JSONL file by the same settings, give the same records."""
    source = tmp_path / "same.jsonl"
    source.write_bytes(b"".join(v + b"\n" for v in values))
    settings = Settings.from_env({"STREAM_APP_DATA_DIR": str(tmp_path / "data")})
    run(read_file(source), tmp_path / "from-file.jsonl", load_scorer(settings).scorer,
        horizon_ms=settings.dedup_horizon_s * 1000, max_bytes=settings.max_message_bytes)
    assert (tmp_path / "from-file.jsonl").read_bytes() == output.read_bytes()


def test_offset_range_per_partition(kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    sent = messages(seed=21, n=400)
    sent[100:100] = MALFORMED[:1]
    sent[250:250] = MALFORMED[1:]
    asyncio.run(produce(kafka_bootstrap, topic, sent))
    partitioner = DefaultPartitioner()
    by_partition: dict[int, list[tuple[int, bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    for key, value in sent:  # one producer: each partition holds its messages in send order
        partition = partitioner(key, list(range(PARTITIONS)), list(range(PARTITIONS)))
        by_partition[partition].append((partition, key, value))
    wanted = [m for p in range(PARTITIONS) for m in by_partition[p][20:150]]  # offsets 20..149 of each
    assert sum(1 for _, key, _ in wanted if key == b"card_bad") == 2  # both malformed messages inside

    output = tmp_path / "out.jsonl"
    rows, scored, errors, duplicates = batch(kafka_bootstrap, tmp_path / "data", topic, output,
                                             "--start-offset", "20", "--end-offset", "150")
    assert (rows, scored, errors, duplicates) == (len(wanted), len(wanted) - 2, 2, 0)
    valid = {orjson.loads(v)["tx_id"] for _, key, v in wanted if key != b"card_bad"}
    assert {r["tx_id"] for r in read_jsonl(output)} == valid
    refused = read_jsonl(errors_path(output))
    assert sorted(e["reason"] for e in refused) == ["invalid_json", "missing_field"]
    for error in refused:
        source = error["source"]
        assert source["topic"] == topic and 20 <= source["offset"] < 150
        assert by_partition[source["partition"]][source["offset"]][1] == b"card_bad"
    same_as_from_a_file(tmp_path, [v for _, _, v in wanted], output)


def test_time_range(kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    before, inside, after = messages(seed=31, n=300), messages(seed=32, n=300), messages(seed=33, n=300)
    inside[150:150] = MALFORMED
    asyncio.run(produce(kafka_bootstrap, topic, before))
    time.sleep(0.3)
    start_ms = int(time.time() * 1000)
    time.sleep(0.3)
    asyncio.run(produce(kafka_bootstrap, topic, inside))
    time.sleep(0.3)
    end_ms = int(time.time() * 1000)
    time.sleep(0.3)
    asyncio.run(produce(kafka_bootstrap, topic, after))

    output = tmp_path / "out.csv"
    rows, scored, errors, duplicates = batch(kafka_bootstrap, tmp_path / "data", topic, output,
                                             "--start-time", format_ts(start_ms), "--end-time", format_ts(end_ms))
    assert (rows, scored, errors, duplicates) == (302, 300, 2, 0)
    with output.open() as f:
        scored_ids = {line.split(",", 1)[0] for line in list(f)[1:]}
    assert scored_ids == {orjson.loads(v)["tx_id"] for key, v in inside if key != b"card_bad"}
    assert all(e["source"]["topic"] == topic for e in read_jsonl(errors_path(output)))

    everything = tmp_path / "all.jsonl"  # no bounds: the whole topic, up to its high watermarks
    assert batch(kafka_bootstrap, tmp_path / "data", topic, everything) == (902, 900, 2, 0)


@pytest.mark.parametrize("bounds", [("--start-offset", "5"), ("--end-time", "2000-01-01T00:00:00Z")])
def test_empty_ranges(kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path,
                      bounds: tuple[str, ...]) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    asyncio.run(produce(kafka_bootstrap, topic, [(b"card_1", b"{}")] * 4))  # offsets 0..3 of one partition
    started = time.monotonic()
    assert batch(kafka_bootstrap, tmp_path / "data", topic, tmp_path / "out.jsonl", *bounds) == (0, 0, 0, 0)
    assert time.monotonic() - started < 20


def test_reading_stops_at_the_high_watermark_not_by_waiting(kafka_bootstrap: str,
                                                             topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    sent = messages(seed=41, n=200)
    asyncio.run(produce(kafka_bootstrap, topic, sent))
    started = time.monotonic()
    read = read_topic(kafka_bootstrap, topic, TopicRange(), idle_s=60.0)
    assert time.monotonic() - started < 20
    assert sorted(value for _, value in read) == sorted(value for _, value in sent)
    assert [(s.partition, s.offset) for s, _ in read] == sorted((s.partition, s.offset) for s, _ in read)
    with pytest.raises(ValueError, match="does not exist"):
        read_topic(kafka_bootstrap, "no-such-topic-here", TopicRange(), idle_s=60.0)
