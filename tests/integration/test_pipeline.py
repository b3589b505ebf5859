"""The whole scoring path on a real broker: a `stream-app worker` process, real topics, real bytes.

Every valid event gets exactly one score record, injected frauds are alerted far above chance,
malformed events land in the DLQ with their reasons, and a replay adds no score and no alert.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
from outputs import PARTITIONS, produce, read_until

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.malformed import corrupt
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.settings import Settings


def test_scores_alerts_dlq_and_replay(kafka_bootstrap: str, app_env: dict[str, str], worker: WorkerProcess) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    items = list(simulate(GeneratorConfig(seed=11, n_customers=400, fraud_rate=0.03), days=3))
    rng = random.Random(3)
    messages, valid, malformed, expected_reasons = [], [], [], Counter()
    for i, item in enumerate(items):  # bad input interleaved with good, event-time order kept
        if i % 97 == 0:
            raw, reason = corrupt(item.tx, rng)
            malformed.append((item.tx.card_id.encode(), raw))
            expected_reasons[reason] += 1
            messages.append(malformed[-1])
        else:
            key = item.tx.tx_id if i % 50 == 0 else item.tx.card_id  # some producers key by tx_id
            valid.append((key.encode(), item.tx.to_bytes()))
            messages.append(valid[-1])
    valid_ids = {item.tx.tx_id for i, item in enumerate(items) if i % 97}
    frauds = {item.tx.tx_id for i, item in enumerate(items) if i % 97 and item.is_fraud}
    assert len(frauds) > 30

    asyncio.run(produce(kafka_bootstrap, s.transactions_topic, messages))
    outputs = [s.scores_topic, s.alerts_topic, s.dlq_topic]

    out = asyncio.run(read_until(
        kafka_bootstrap, outputs, PARTITIONS,
        lambda o: len(o.of(s.scores_topic)) >= len(valid_ids) and len(o.of(s.dlq_topic)) >= len(malformed),
        timeout_s=120))
    scores, alerts, dlq = out.of(s.scores_topic), out.of(s.alerts_topic), out.of(s.dlq_topic)

    scored_ids = Counter(r["tx_id"] for r in scores)
    assert set(scored_ids) == valid_ids, "every valid event is scored"
    assert max(scored_ids.values()) == 1, "exactly one score record per tx_id"
    assert Counter(r["reason"] for r in dlq) == expected_reasons
    assert all(r["original_b64"] and r["source"]["topic"] == s.transactions_topic for r in dlq)

    alert_ids = [a["tx_id"] for a in alerts]
    assert len(alert_ids) == len(set(alert_ids))
    recall = len(frauds & set(alert_ids)) / len(frauds)
    false_alarm_rate = len(set(alert_ids) - frauds) / (len(valid_ids) - len(frauds))
    assert recall >= 0.3 and recall >= 20 * false_alarm_rate, (recall, false_alarm_rate)
    assert all(k == a["card_id"].encode() for k, a in zip(out.keys[s.alerts_topic], alerts, strict=True))

    # Replay all valid events, then fresh sentinels on every card partition; once the sentinels are
    # scored, the replay (earlier on the same partitions) has been processed too.
    sentinels = list(simulate(GeneratorConfig(seed=12, n_customers=400, fraud_rate=0.0), days=0.2))
    asyncio.run(produce(kafka_bootstrap, s.transactions_topic, valid))
    asyncio.run(produce(kafka_bootstrap, s.transactions_topic,
                        [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in sentinels]))
    sentinel_ids = {i.tx.tx_id for i in sentinels}
    after = asyncio.run(read_until(
        kafka_bootstrap, outputs, PARTITIONS,
        lambda o: sentinel_ids <= {r["tx_id"] for r in o.of(s.scores_topic)}, timeout_s=120))
    assert sentinel_ids <= {r["tx_id"] for r in after.of(s.scores_topic)}
    replay_scores = Counter(r["tx_id"] for r in after.of(s.scores_topic) if r["tx_id"] in valid_ids)
    assert max(replay_scores.values()) == 1, "a replay adds no score record"
    assert sorted(a["tx_id"] for a in after.of(s.alerts_topic) if a["tx_id"] in valid_ids) == sorted(alert_ids)
    assert worker.process is not None and worker.process.poll() is None, "the worker survived all of it"


def test_web_server_is_loopback_only_and_hides_tables(worker: WorkerProcess) -> None:
    import subprocess
    import urllib.error
    import urllib.request

    assert worker.process is not None
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    mine = [line for line in listening.splitlines() if f"pid={worker.process.pid}," in line]
    assert mine, listening
    assert all(line.split()[3].startswith("127.0.0.1:") for line in mine), mine
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/table/cards/", timeout=5)
    assert info.value.code == 404


def test_restarted_worker_recovers_card_state(kafka_bootstrap: str, app_env: dict[str, str], tmp_path: Path) -> None:
    """Card state comes back from the changelog: features continue, and a replay is still recognised."""
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    items = list(simulate(GeneratorConfig(seed=21, n_customers=50, fraud_rate=0.0), days=4))
    first, second = items[: len(items) // 2], items[len(items) // 2:]
    outputs = [s.scores_topic]

    def send(batch: list) -> None:  # type: ignore[type-arg]
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic,
                            [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in batch]))

    def scored(ids: set[str]) -> dict[str, dict]:  # type: ignore[type-arg]
        out = asyncio.run(read_until(kafka_bootstrap, outputs, PARTITIONS,
                                     lambda o: ids <= {r["tx_id"] for r in o.of(s.scores_topic)}, timeout_s=120))
        return {r["tx_id"]: r for r in out.of(s.scores_topic) if r["tx_id"] in ids}

    w1 = WorkerProcess(kafka_bootstrap, tmp_path / "w1", app_env).start()
    try:
        w1.wait_ready()
        send(first)
        assert len(scored({i.tx.tx_id for i in first})) == len(first)
    finally:
        w1.stop()

    w2 = WorkerProcess(kafka_bootstrap, tmp_path / "w2", app_env).start()
    try:
        w2.wait_ready()
        send(first)  # a replay across the restart
        send(second)
        records = scored({i.tx.tx_id for i in second})
        assert len(records) == len(second)
    finally:
        w2.stop()

    # Reference: the same events through featurize in one process, no restart.
    from stream_app.domain.features import FEATURE_NAMES, featurize

    states: dict = {}
    expected = {i.tx.tx_id: featurize(states, i.tx, s.dedup_horizon_s * 1000) for i in items}
    for item in second:
        got = records[item.tx.tx_id]["features"]
        assert [got[n] for n in FEATURE_NAMES] == pytest.approx(expected[item.tx.tx_id]), item.tx.tx_id
    all_scores = asyncio.run(read_until(kafka_bootstrap, outputs, PARTITIONS, lambda o: False, timeout_s=3))
    counts = Counter(r["tx_id"] for r in all_scores.of(s.scores_topic))
    assert max(counts.values()) == 1, "the replay after the restart added no score record"
