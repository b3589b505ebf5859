"""GET /metrics during a real run: counters equal what was sent, histograms are filled."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import orjson
from outputs import PARTITIONS, produce, read_until, scrape

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.malformed import corrupt
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.settings import Settings


def test_metrics_count_what_was_sent(kafka_bootstrap: str, app_env: dict[str, str], tmp_path: Path) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    items = list(simulate(GeneratorConfig(seed=13, n_customers=200, fraud_rate=0.05), days=1))
    rng = random.Random(2)
    messages, reasons = [], Counter()
    for i, item in enumerate(items):
        if i % 40 == 0:
            raw, reason = corrupt(item.tx, rng)
            reasons[reason] += 1
            messages.append((item.tx.card_id.encode(), raw))
        else:
            messages.append((item.tx.card_id.encode(), item.tx.to_bytes()))
    valid = len(messages) - sum(reasons.values())
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "w", app_env).start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic, messages))
        asyncio.run(read_until(kafka_bootstrap, [s.scores_topic], PARTITIONS,
                               lambda o: len(o.of(s.scores_topic)) >= valid, 120))
        time.sleep(6)  # gauges refresh every 5 s
        m = scrape(worker.web_port)
    finally:
        worker.stop()
    assert m[("stream_app_events_consumed_total", ())] == len(messages)
    assert m[("stream_app_events_scored_total", ())] == valid
    for reason, n in reasons.items():
        assert m[("stream_app_events_dead_lettered_total", (("reason", reason), ("topic", s.dlq_topic)))] == n
    assert m[("stream_app_end_to_end_latency_seconds_count", (("since", "message_timestamp"),))] == valid
    assert m[("stream_app_risk_score_count", ())] == valid
    alerts = sum(v for (name, _), v in m.items() if name == "stream_app_alerts_total")
    assert alerts == m[("stream_app_risk_score_count", ())] - m[("stream_app_risk_score_bucket", (("le", "0.3"),))]
    for stage in ("decode", "features", "onnx", "river", "produce"):
        assert m[("stream_app_stage_seconds_total", (("stage", stage),))] > 0
    lags = [v for (name, _), v in m.items() if name == "stream_app_consumer_lag_messages"]
    assert lags and all(v == 0 for v in lags)  # caught up
    assert m[("stream_app_card_states", ())] > 0
    assert any(name == "stream_app_model_info" for name, _ in m)
    # The collector set for a worker (stream_app/worker/collector.py): start-up frozen, pauses observed.
    assert m[("stream_app_gc_pause_seconds_count", (("generation", "2"),))] >= 1  # the collection before freezing
    assert m[("stream_app_gc_pause_seconds_count", (("generation", "0"),))] >= 1
    ready = next(line for line in worker.log().splitlines() if '"worker.ready"' in line)
    assert orjson.loads(ready)["gc_frozen_objects"] > 10_000  # modules, models
