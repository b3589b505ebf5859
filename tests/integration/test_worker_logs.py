"""Every line a `stream-app worker` writes is a JSON object, ours and faust's, mode's and aiokafka's, from start
to stop, with no terminal escape codes; and faust's stall check stays quiet while the worker scores.

faust checks every partition's last stream inbound time each ``broker_commit_interval * 2.5`` seconds and logs
"Stream has not started processing TP(...)" when a partition with unread records has had none since the
consumer started ``stream_processing_timeout`` ago (5 min by default). Both are shortened here (faust's own
environment variables): the check runs every second, and from 10 s after the consumer started (more than a
worker's start-up, so every partition had its first batch) every check that finds unread records on a
partition would report it if the micro-batches did not record their partitions' inbound time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from outputs import PARTITIONS, read_until

from stream_app.devtools.generator import GeneratorConfig
from stream_app.devtools.publisher import TrafficPlan, publish_traffic
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.settings import Settings


def json_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's log as records, after asserting that it has no escape code and only JSON objects."""
    raw = worker.log_path.read_bytes()
    assert b"\x1b" not in raw, "no terminal escape codes"
    records, not_json = [], []
    for line in raw.decode().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            not_json.append(line)
    assert not not_json, f"{len(not_json)} lines are not JSON, e.g. {not_json[:5]}"
    assert all(isinstance(r, dict) and isinstance(r.get("event"), str) and r.get("level") for r in records)
    assert "worker.ready" in [r["event"] for r in records]
    return records


def test_worker_log_is_json_and_without_false_stalls_while_scoring(kafka_bootstrap: str, app_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    """At the default log level, where faust's terminal spinner wrote ESC [?25h before `worker.ready`."""
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    env = {**app_env, "STREAM_PROCESSING_TIMEOUT": "10", "BROKER_COMMIT_INTERVAL": "0.4"}
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "w", env).start()
    try:
        worker.wait_ready()
        report = asyncio.run(publish_traffic(
            kafka_bootstrap, s.transactions_topic, s.labels_topic, GeneratorConfig(seed=5, n_customers=300),
            TrafficPlan(rate=2000, seconds=8, label_delay_s=1.0, malformed_rate=0.02)))
        valid = report.sent - report.malformed
        out = asyncio.run(read_until(kafka_bootstrap, [s.scores_topic], PARTITIONS,
                                     lambda o: len(o.of(s.scores_topic)) >= valid, timeout_s=120))
        assert len(out.of(s.scores_topic)) >= valid, "the worker scored the traffic"
    finally:
        worker.stop()
    stalls = [r["event"] for r in json_lines(worker) if "has not started processing" in r["event"]]
    assert not stalls, stalls


def test_faust_and_mode_records_are_json_lines(kafka_bootstrap: str, app_env: dict[str, str],
                                               tmp_path: Path) -> None:
    """At info level faust and mode log their whole start and stop: each record is one JSON line."""
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "w", app_env, args=["--faust-log-level", "info"]).start()
    try:
        worker.wait_ready()
    finally:
        worker.stop()
    records = json_lines(worker)
    assert {r["logger"].split(".")[0] for r in records if "logger" in r} >= {"faust", "mode", "aiokafka"}
    assert "[^_Worker]: Closing event loop" in [r["event"] for r in records], "the log runs to the end"
