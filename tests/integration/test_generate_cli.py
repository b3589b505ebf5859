"""`stream-app generate` on a real broker: event times are the wall clock unless a backfill is asked
for, and every valid transaction's label is published before RESULT (the last ones are waited for)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import orjson

from stream_app.domain.events import parse_transaction, parse_ts
from stream_app.kafka.topic_reader import TopicRange, read_topic

COUNT = 300


def _command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "stream_app.cli", "generate", "--rate", "300", "--label-delay", "2",
            "--malformed-rate", "0.05", "--customers", "200", *extra]


def _env(kafka_bootstrap: str, app_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}


def _result(returncode: int, stdout: str, stderr: str) -> dict[str, str]:
    assert returncode == 0, stderr[-2000:]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return dict(re.findall(r"(\w+)=(\S+)", last))


def _generate(kafka_bootstrap: str, app_env: dict[str, str], *extra: str) -> dict[str, str]:
    proc = subprocess.run(_command("--count", str(COUNT), *extra), capture_output=True, text=True, timeout=120,
                          env=_env(kafka_bootstrap, app_env))
    return _result(proc.returncode, proc.stdout, proc.stderr)


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


def test_generate_start_time_now_simulates_days_from_the_current_time(kafka_bootstrap: str,
                                                                     app_env: dict[str, str]) -> None:
    before_ms = time.time() * 1000
    _generate(kafka_bootstrap, app_env, "--start-time", "now")
    event_times = sorted(event_ms for _, event_ms, _ in _valid(
        _read(kafka_bootstrap, app_env["STREAM_APP_TRANSACTIONS_TOPIC"])))
    assert before_ms - 1000 <= event_times[0] <= before_ms + 3_600_000, "the simulation starts now"
    assert event_times[-1] - event_times[0] > 3_600_000, "simulated time runs faster than the clock"


def test_stopped_generate_still_sends_every_label_before_result(kafka_bootstrap: str,
                                                                app_env: dict[str, str]) -> None:
    """SIGTERM (a container stop) mid-run: the labels not yet due are sent at once, then RESULT."""
    proc = subprocess.Popen(_command("--seconds", "60", "--label-delay", "30"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(kafka_bootstrap, app_env))
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("sent="):  # the first progress line: a second of traffic is out
            break
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    result = _result(proc.returncode, stdout, stderr)
    assert "labels were sent without their delay" in stderr
    valid = _valid(_read(kafka_bootstrap, app_env["STREAM_APP_TRANSACTIONS_TOPIC"]))
    labels = [orjson.loads(v)["tx_id"] for _, v in _read(kafka_bootstrap, app_env["STREAM_APP_LABELS_TOPIC"])]
    assert len(valid) == int(result["sent"]) - int(result["malformed"]) > 0
    assert sorted(labels) == sorted(tx_id for *_, tx_id in valid) and int(result["labels"]) == len(labels)
