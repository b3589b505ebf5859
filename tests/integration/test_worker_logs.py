"""Every line a `stream-app worker` writes is a JSON object: ours, faust's, mode's and aiokafka's, from start to
stop, with no terminal escape codes; and faust's stall check stays quiet while the worker scores.

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

from outputs import PARTITIONS, read_until

from stream_app.generator import GeneratorConfig
from stream_app.kafka.publisher import TrafficPlan, publish_traffic
from stream_app.settings import Settings
from stream_app.worker_process import WorkerProcess


def test_every_worker_line_is_json_and_no_false_stall(kafka_bootstrap: str, app_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    env = {**app_env, "STREAM_PROCESSING_TIMEOUT": "10", "BROKER_COMMIT_INTERVAL": "0.4"}
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "w", env, args=["--faust-log-level", "info"]).start()
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
    assert worker.process is not None and worker.process.returncode == 0

    raw = worker.log_path.read_bytes()
    assert b"\x1b" not in raw, "no terminal escape codes"
    lines = raw.decode().splitlines()
    not_json = []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            not_json.append(line)
    assert not not_json, f"{len(not_json)} of {len(lines)} lines are not JSON, e.g. {not_json[:5]}"
    assert all(isinstance(r, dict) and isinstance(r.get("event"), str) and r.get("level") for r in records)
    events = [r["event"] for r in records]
    assert "worker.ready" in events
    assert {r["logger"].split(".")[0] for r in records if "logger" in r} >= {"faust", "mode"}, \
        "faust's and mode's own records are in the log, as JSON"
    stalls = [e for e in events if "has not started processing" in e]
    assert not stalls, stalls
