"""Chaos on a real broker: two workers under load, kill -9 one, restart it; and a broker that restarts.

The first test is `python -m loadtests.chaos --restart` in small: every ledger entry accounted for
(0 lost), 0 duplicate alerts, a finite takeover, card state continuous across the takeover and the
restart (features equal to one uninterrupted pass), and the restarted worker scores again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path


from loadtests.chaos import ChaosOptions, run_chaos
from stream_app.worker_process import topic_env
from stream_app.cli import create_topics
from stream_app.kafka.broker import EmbeddedBroker
from stream_app.settings import Settings
from stream_app.worker_process import WorkerProcess


def test_kill9_one_of_two_workers(kafka_bootstrap: str, tmp_path: Path) -> None:
    report = run_chaos(ChaosOptions(rate=200, seconds=36, kill_at=0.2, restart=True, restart_after_s=16,
                                    bootstrap=kafka_bootstrap, workdir=tmp_path))
    c = report.check
    print("\n".join(c.lines()), report.takeover_by_partition, report.result_line(), sep="\n")
    assert c.sent > 5000 and c.valid > 0 and c.malformed > 0
    assert c.lost == 0, (c.lost_valid[:10], c.lost_malformed[:10])
    assert c.duplicate_alerts == 0, c.duplicated_alert_ids[:10]
    assert math.isfinite(report.takeover_s) and report.takeover_s > 0
    assert report.feature_mismatches == 0, report.notes
    assert report.restarted_scored is not None and report.restarted_scored > 0, "the restarted worker rejoined"


def test_broker_restart_with_memory_storage_stops_the_worker_loudly(tmp_path: Path) -> None:
    """Tansu's memory storage loses every topic, offset and changelog when it stops. A worker must not
    stall silently then: it exits non-zero with `broker.topics_missing` in its log."""
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    worker = None
    try:
        env = topic_env("brk", 2)
        create_topics(Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}))
        worker = WorkerProcess(broker.bootstrap, tmp_path / "worker", env).start()
        worker.wait_ready()
        port = broker.port
        broker.stop()
        broker.start()  # same port, empty
        assert broker.port == port
        assert worker.process is not None
        deadline = time.monotonic() + 60
        while worker.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker.process.returncode not in (None, 0), worker.log()[-3000:]
        assert '"broker.topics_missing"' in worker.log()
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
