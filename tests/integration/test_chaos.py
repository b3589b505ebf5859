"""Chaos on a real broker: two workers under load, kill -9 one, restart it; and a broker that restarts.

The first test is `python -m loadtests.chaos --restart --partitioner mixed` in small: every ledger entry
accounted for (0 lost), 0 duplicate alerts and scores, a finite takeover, card state continuous across
the takeover and the restart (each card's last stored state holds exactly its events), and the restarted
worker scores again, while each event's producer partitioned it by murmur2, CRC-32 or FNV-1a. The second is the
CRC-32 case alone, without a kill but with a rebalance: features equal to one uninterrupted pass, every event
scored in its card's partition.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from pathlib import Path

from outputs import scrape

from loadtests.chaos import ChaosOptions, Load, entity_mismatches, feature_mismatches, run_chaos, unique, wait_scored
from loadtests.ledger import LedgerWriter, check, read_ledger
from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.domain.ingress import card_partition
from stream_app.kafka.topics import create_topics
from stream_app.settings import Settings


def test_kill9_one_of_two_workers(kafka_bootstrap: str, tmp_path: Path) -> None:
    report = run_chaos(ChaosOptions(rate=200, seconds=36, kill_at=0.2, restart=True, restart_after_s=16,
                                    bootstrap=kafka_bootstrap, workdir=tmp_path, partitioner="mixed"))
    c = report.check
    print("\n".join(c.lines()), report.takeover_by_partition, report.result_line(), sep="\n")
    assert c.sent > 5000 and c.valid > 0 and c.malformed > 0
    assert c.lost == 0, (c.lost_valid[:10], c.lost_malformed[:10])
    assert c.duplicate_alerts == 0, c.duplicated_alert_ids[:10]
    assert c.duplicate_scores == 0, c.duplicated_score_ids[:10]
    assert math.isfinite(report.takeover_s) and report.takeover_s > 0
    # Mixed producers split a card's events over partitions, which Kafka does not order between: features
    # follow arrival order (loadtests.chaos), so the card states are what must match the reference here.
    assert report.state_mismatches == 0, report.notes
    assert report.entity_mismatches == 0, report.notes  # survivors' and restarted worker's merchant replicas
    assert report.restarted_scored is not None and report.restarted_scored > 0, "the restarted worker rejoined"


def test_crc32_producer_card_state_follows_the_card_across_a_rebalance(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A librdkafka-like producer (CRC-32 of the key) puts most cards' events outside their murmur2
    partition, where the card tables' changelogs put their state. One worker scores a first phase, a
    second joins (the group rebalances; each recovers the changelog partitions it now owns), then a
    second phase of the same cards. Before the re-keying by partition, the joining worker rebuilt the
    states of other cards than those whose events it got: features diverged from one uninterrupted pass."""
    o = ChaosOptions(rate=150, seconds=3, customers=30, malformed_rate=0.0, partitioner="crc32")
    env = {**topic_env(f"crc-{uuid.uuid4().hex[:8]}", o.partitions),
           "STREAM_APP_SESSION_TIMEOUT_S": str(o.session_timeout_s)}
    s = Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    create_topics(s)
    ledger = LedgerWriter(tmp_path / "ledger.jsonl")
    load = Load(kafka_bootstrap, s.transactions_topic, ledger, o)
    first, second = (WorkerProcess(kafka_bootstrap, tmp_path / name, env) for name in ("worker-a", "worker-b"))
    try:
        first.start().wait_ready()
        asyncio.run(load.run(asyncio.Event()))
        phase1 = asyncio.run(wait_scored(kafka_bootstrap, s, {t.tx_id for t in load.valid}, 60))
        second.start().wait_ready()
        asyncio.run(load.run(asyncio.Event()))
        outputs = asyncio.run(wait_scored(kafka_bootstrap, s, {t.tx_id for t in load.valid}, 90))
        scored_by_second = scrape(second.web_port)[("stream_app_events_scored_total", ())]
        scored_ids = {r.value["tx_id"] for r in outputs.scores}
        entities_bad, bad_entities = entity_mismatches([t for t in unique(load.valid) if t.tx_id in scored_ids],
                                                       [first.web_port, second.web_port])
    finally:
        second.stop()
        first.stop()
    ledger.close()
    c = check(read_ledger(tmp_path / "ledger.jsonl"), outputs, s.transactions_topic)
    print("\n".join(c.lines()))
    assert len(phase1.scores) > 300 and len(load.valid) > len(phase1.scores) + 300  # two phases of load
    assert c.lost == 0 and c.duplicate_scores == 0, c.lost_valid[:10]
    assert scored_by_second > 0, "the second worker took partitions over"
    mismatches, bad = feature_mismatches(load.valid, outputs, s.dedup_horizon_s * 1000)
    assert mismatches == 0, bad[:10]
    assert entities_bad == 0, bad_entities[:10]  # both replicas hold every merchant's transactions exactly once
    sources = [(r.value["source"], r.value["card_id"].encode()) for r in outputs.scores]
    assert sum(src["topic"] == s.rekeyed_topic for src, _ in sources) > len(sources) / 2  # most were misplaced
    assert all(src["partition"] == card_partition(card, o.partitions) for src, card in sources)


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
