"""`stream-app generate` on a real broker: event times are the wall clock unless a backfill is asked
for, and every valid transaction's label is published before RESULT (the last ones are waited for)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import orjson

from stream_app.events import parse_transaction, parse_ts
from stream_app.kafka.topic_reader import TopicRange, read_topic

COUNT = 300


def _generate(kafka_bootstrap: str, app_env: dict[str, str], *extra: str) -> dict[str, str]:
    env = {**os.environ, **app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "generate", "--count", str(COUNT), "--rate", "300",
                           "--label-delay", "2", "--malformed-rate", "0.05", "--customers", "200", *extra],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return dict(re.findall(r"(\w+)=(\S+)", last))


def _read(kafka_bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """(producer timestamp ms, value): read until idle, not to the end offsets (Tansu reports them wrong)."""
    return [(source.timestamp_ms, value) for source, value in read_topic(kafka_bootstrap, topic, TopicRange(),
                                                                         idle_s=3.0)]


def _valid(messages: list[tuple[int, bytes]]) -> list[tuple[int, int, str]]:
    """(send time, event time, tx_id) of the transactions that parse (the malformed ones do not)."""
    out = []
    for sent_ms, value in messages:
        try:
            tx = parse_transaction(value)
        except ValueError:
            continue
        out.append((sent_ms, tx.ts_ms, tx.tx_id))
    return out


def test_generate_sends_wall_clock_event_times_and_every_label(kafka_bootstrap: str,
                                                                 app_env: dict[str, str]) -> None:
    before_ms = time.time() * 1000
    result = _generate(kafka_bootstrap, app_env)
    after_ms = time.time() * 1000
    transactions = _read(kafka_bootstrap, app_env["STREAM_APP_TRANSACTIONS_TOPIC"])
    labels = [orjson.loads(v) for _, v in _read(kafka_bootstrap, app_env["STREAM_APP_LABELS_TOPIC"])]

    assert len(transactions) == int(result["sent"]) == COUNT
    valid = _valid(transactions)
    assert len(valid) == COUNT - int(result["malformed"]) and int(result["malformed"]) > 0
    for sent_ms, event_ms, _ in valid:
        assert before_ms - 1000 <= event_ms <= after_ms + 1000
        assert abs(event_ms - sent_ms) <= 2000, "event time is the moment it is sent"
    # Every valid transaction has its label, the last --label-delay seconds' included, and RESULT says so.
    assert sorted(label["tx_id"] for label in labels) == sorted(tx_id for *_, tx_id in valid)
    assert int(result["labels"]) == len(labels) == len(valid)
    assert parse_ts(result["first_event"]) >= before_ms - 1000 and parse_ts(result["last_event"]) <= after_ms + 1000


def test_generate_with_start_time_backfills_simulated_days(kafka_bootstrap: str, app_env: dict[str, str]) -> None:
    start_ms = parse_ts("2026-01-01T00:00:00Z")
    result = _generate(kafka_bootstrap, app_env, "--start-time", "2026-01-01T00:00:00Z")
    event_times = sorted(event_ms for _, event_ms, _ in _valid(
        _read(kafka_bootstrap, app_env["STREAM_APP_TRANSACTIONS_TOPIC"])))
    assert event_times[0] >= start_ms and event_times[-1] < start_ms + 7 * 86_400_000
    assert event_times[-1] - event_times[0] > 3_600_000, "simulated time runs faster than the clock"
    assert int(result["labels"]) == len(event_times)
