"""The feedback path on a real broker: labels teach the River model, models change without restarts.

Each test runs `stream-app worker` processes against the session's broker, with topics of its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from outputs import PARTITIONS, produce, read_until, scrape

from stream_app.devtools.generator import GeneratorConfig, LabeledTx, label_record, simulate
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.entities import MODEL_FEATURES
from stream_app.models import checkpoint
from stream_app.models.onnx_model import card_path, packaged_model_path, sha256_file
from stream_app.offline.evaluation import average_precision
from stream_app.settings import Settings

KEY = "test-checkpoint-key"


def settings_of(env: dict[str, str], bootstrap: str) -> Settings:
    return Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})


def send_transactions(s: Settings, items: list[LabeledTx]) -> None:
    asyncio.run(produce(s.bootstrap_servers, s.transactions_topic,
                        [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in items]))


def send_labels(s: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    asyncio.run(produce(s.bootstrap_servers, s.labels_topic, messages))


def labels_of(items: list[LabeledTx]) -> list[tuple[bytes | None, bytes]]:
    return [(i.tx.tx_id.encode(), orjson.dumps(label_record(i, i.tx.ts_ms + 86_400_000))) for i in items]


def wait_scores(s: Settings, ids: set[str], timeout_s: float = 120) -> dict[str, dict[str, Any]]:
    out = asyncio.run(read_until(s.bootstrap_servers, [s.scores_topic], PARTITIONS,
                                 lambda o: ids <= {r["tx_id"] for r in o.of(s.scores_topic)}, timeout_s))
    records = {r["tx_id"]: r for r in out.of(s.scores_topic) if r["tx_id"] in ids}
    assert set(records) == ids, f"{len(ids - set(records))} transactions not scored"
    return records


def read_examples(s: Settings, at_least: int, timeout_s: float = 120) -> list[dict[str, Any]]:
    out = asyncio.run(read_until(s.bootstrap_servers, [s.examples_topic], 1,
                                 lambda o: len(o.of(s.examples_topic)) >= at_least, timeout_s))
    return out.of(s.examples_topic)


def wait_checkpoint(directory: Path, offset: int, timeout_s: float = 180) -> checkpoint.Checkpoint:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        best, _ = checkpoint.latest(directory, KEY.encode()) if directory.exists() else (None, [])
        if best is not None and best.offset >= offset:
            return best
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint at offset {offset} in {directory}")


@pytest.fixture
def feedback_env(app_env: dict[str, str]) -> dict[str, str]:
    return {**app_env, "STREAM_APP_CHECKPOINT_INTERVAL_S": "1", "STREAM_APP_CHECKPOINT_KEY": KEY,
            "STREAM_APP_MODEL_POLL_S": "0.5", "STREAM_APP_LABEL_WAIT_S": "2"}


def test_bad_duplicate_and_unknown_labels_are_counted_never_crash(
        kafka_bootstrap: str, feedback_env: dict[str, str], tmp_path: Path) -> None:
    s = settings_of(feedback_env, kafka_bootstrap)
    items = list(simulate(GeneratorConfig(seed=41, n_customers=200, fraud_rate=0.05), days=1))
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "w", feedback_env).start()
    try:
        worker.wait_ready()
        send_transactions(s, items)
        wait_scores(s, {i.tx.tx_id for i in items})
        good = labels_of(items)
        bad: list[tuple[bytes | None, bytes]] = [
            (b"tx-unknown", orjson.dumps({**json.loads(good[0][1]), "tx_id": "tx-unknown"})),
            (b"k", b"{not json"),
            (b"k", orjson.dumps({**json.loads(good[1][1]), "label": 1})),
            (b"k", orjson.dumps({**json.loads(good[2][1]), "source": "rumour"})),
            (b"k", orjson.dumps([1, 2])),
        ]
        send_labels(s, good + good[:50] + bad)  # 50 labels arrive twice
        examples = read_examples(s, len(good))
        dlq = asyncio.run(read_until(kafka_bootstrap, [s.labels_dlq_topic], PARTITIONS,
                                     lambda o: len(o.of(s.labels_dlq_topic)) >= len(bad), 60)).of(s.labels_dlq_topic)
        time.sleep(2)  # let the duplicates arrive, if they were (wrongly) going to be learned
        examples = read_examples(s, len(good), timeout_s=3)
        assert worker.process is not None and worker.process.poll() is None
    finally:
        worker.stop()
    assert Counter(e["tx_id"] for e in examples) == Counter(i.tx.tx_id for i in items), "each label teaches once"
    assert sorted(r["reason"] for r in dlq) == sorted(
        ["unknown_tx", "invalid_json", "wrong_type", "invalid_value", "not_an_object"])
    stats = [json.loads(line) for line in worker.log().splitlines()
             if line.startswith("{") and '"worker.stats"' in line]
    if stats:  # the stats timer runs every 30 s; when it did, its counts must agree
        assert stats[-1].get("stream_app_labels_total{outcome=duplicate}", 0) <= 50
        assert stats[-1].get("stream_app_labels_total{outcome=unknown}", 0) <= 1


def test_two_workers_join_every_label_once_whatever_its_key_and_order(
        kafka_bootstrap: str, feedback_env: dict[str, str], tmp_path: Path) -> None:
    """The join lives in the card's partition: with two workers sharing the partitions, a label keyed by
    tx_id (re-keyed through labels.by-card) or by card, sent before its transaction (parked) or after,
    reaches the worker that scored its transaction and teaches exactly once."""
    s = settings_of(feedback_env, kafka_bootstrap)
    items = list(simulate(GeneratorConfig(seed=43, n_customers=300, fraud_rate=0.05), days=1))
    early, late = items[: len(items) // 3], items[len(items) // 3:]

    def labels(part: list[LabeledTx]) -> list[tuple[bytes | None, bytes]]:
        return [((i.tx.tx_id if n % 2 else i.tx.card_id).encode(), value)
                for n, (i, (_, value)) in enumerate(zip(part, labels_of(part), strict=True))]

    workers = [WorkerProcess(kafka_bootstrap, tmp_path / name, {**feedback_env, "STREAM_APP_LABEL_WAIT_S": "120"})
               for name in ("a", "b")]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        time.sleep(8)  # the second worker's join settles the assignment
        send_labels(s, labels(early))  # before their transactions: parked, joined when they are scored
        send_transactions(s, items)
        wait_scores(s, {i.tx.tx_id for i in items})
        send_labels(s, labels(late))
        examples = read_examples(s, len(items))
        time.sleep(2)
        examples = read_examples(s, len(items), timeout_s=3)
        metrics = [scrape(w.web_port) for w in workers]
    finally:
        for w in workers:
            w.stop()
    assert Counter(e["tx_id"] for e in examples) == Counter(i.tx.tx_id for i in items), "each label teaches once"
    scored = [m.get(("stream_app_events_scored_total", ()), 0) for m in metrics]
    joined = [m.get(("stream_app_labels_total", (("outcome", "joined"),)), 0) for m in metrics]
    assert all(scored) and all(joined) and sum(scored) >= len(items), (scored, joined)  # both shared the work


def test_restart_restores_the_checkpointed_model(
        kafka_bootstrap: str, feedback_env: dict[str, str], tmp_path: Path) -> None:
    s = settings_of(feedback_env, kafka_bootstrap)
    items = list(simulate(GeneratorConfig(seed=42, n_customers=300, fraud_rate=0.05), days=2))
    probes = list(simulate(GeneratorConfig(seed=43, n_customers=300, fraud_rate=0.05), days=0.3))
    workdir = tmp_path / "w"
    first = WorkerProcess(kafka_bootstrap, workdir, feedback_env).start()
    try:
        first.wait_ready()
        send_transactions(s, items)
        wait_scores(s, {i.tx.tx_id for i in items})
        send_labels(s, labels_of(items))
        assert len(read_examples(s, len(items))) == len(items)
        saved = wait_checkpoint(workdir / "data" / "checkpoints", len(items) - 1)
    finally:
        first.kill()  # kill -9: no goodbye checkpoint
    assert saved.version == f"river-logreg@{len(items)}"

    second = WorkerProcess(kafka_bootstrap, workdir, feedback_env).start()
    try:
        second.wait_ready()
        send_transactions(s, probes)
        records = wait_scores(s, {i.tx.tx_id for i in probes})
    finally:
        second.stop()
    river = saved.state[0]
    for record in records.values():
        assert record["model_versions"]["river"] == saved.version
        row = [record["features"][n] for n in MODEL_FEATURES]
        assert record["scores"]["river"] == pytest.approx(river.predict_proba_one(row), abs=2e-6)


def test_refused_onnx_model_leaves_the_old_one_serving(
        kafka_bootstrap: str, feedback_env: dict[str, str], tmp_path: Path) -> None:
    from stream_app.offline.training import TrainConfig, train_and_export

    models = tmp_path / "models"
    models.mkdir()
    env = {**feedback_env, "STREAM_APP_MODEL_WATCH_PATH": str(models)}
    s = settings_of(env, kafka_bootstrap)
    batches = [list(simulate(GeneratorConfig(seed=60 + k, n_customers=100), days=0.3)) for k in range(3)]
    shipped = json.loads(card_path(packaged_model_path()).read_text())["version"]
    new_card = train_and_export(TrainConfig(seed=3, n_customers=300, days=20, label_delay_days=3, test_days=5,
                                            n_estimators=20, output_dir=str(tmp_path / "new")))

    worker = WorkerProcess(kafka_bootstrap, tmp_path / "w", env).start()
    try:
        worker.wait_ready()
        send_transactions(s, batches[0])
        assert {r["model_versions"]["onnx"] for r in wait_scores(s, {i.tx.tx_id for i in batches[0]}).values()} == {
            shipped}

        bad = models / "broken.onnx"  # corrupt bytes, with a card that vouches for them
        data = bytearray(packaged_model_path().read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
        bad.write_bytes(bytes(data))
        card = json.loads(card_path(packaged_model_path()).read_text())
        card_path(bad).write_text(json.dumps({**card, "sha256": sha256_file(bad), "version": "broken"}))
        deadline = time.monotonic() + 30
        while '"model.refused"' not in worker.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert '"model.refused"' in worker.log()
        send_transactions(s, batches[1])
        assert {r["model_versions"]["onnx"] for r in wait_scores(s, {i.tx.tx_id for i in batches[1]}).values()} == {
            shipped}

        good = models / "newer.onnx"
        shutil.copy(card_path(tmp_path / "new" / "fraud_gbt.onnx"), card_path(good))
        shutil.copy(tmp_path / "new" / "fraud_gbt.onnx", good)
        deadline = time.monotonic() + 30
        while '"model.swapped"' not in worker.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        send_transactions(s, batches[2])
        after = wait_scores(s, {i.tx.tx_id for i in batches[2]})
        assert worker.process is not None and worker.process.poll() is None
    finally:
        worker.stop()
    assert {r["model_versions"]["onnx"] for r in after.values()} == {new_card["version"]} != {shipped}


def test_online_model_adapts_to_a_new_fraud_pattern(
        kafka_bootstrap: str, feedback_env: dict[str, str], tmp_path: Path) -> None:
    """Prequential, on the embedded broker: before the drift the model learns card testing and amount
    spikes; then stolen cards abroad appear. Scores of the learning model (given before each label)
    must beat a frozen copy of the same model, taken at the drift, on the new pattern."""
    s = settings_of(feedback_env, kafka_bootstrap)
    config = GeneratorConfig(seed=77, n_customers=1500, fraud_rate=0.03, patterns=("card_testing", "amount_spike"),
                             drift_at_day=2.0, drift_patterns=("stolen_card_abroad",))
    items = list(simulate(config, days=5))
    drift_ms = config.start_ms + 2 * 86_400_000
    before = [i for i in items if i.tx.ts_ms < drift_ms]
    after = [i for i in items if i.tx.ts_ms >= drift_ms]
    workdir = tmp_path / "w"
    worker = WorkerProcess(kafka_bootstrap, workdir, feedback_env).start()
    records: dict[str, dict[str, Any]] = {}
    try:
        worker.wait_ready()
        send_transactions(s, before)
        records.update(wait_scores(s, {i.tx.tx_id for i in before}))
        send_labels(s, labels_of(before))
        read_examples(s, len(before))
        frozen = wait_checkpoint(workdir / "data" / "checkpoints", len(before) - 1).state[0]
        chunk = 1000
        for k in range(0, len(after), chunk):  # score a chunk, then learn its labels: prequential
            part = after[k:k + chunk]
            send_transactions(s, part)
            records.update(wait_scores(s, {i.tx.tx_id for i in part}))
            send_labels(s, labels_of(part))
            read_examples(s, len(before) + k + len(part))
    finally:
        worker.stop()
    late = after[len(after) // 2:]  # once the learner has seen the first half of the new pattern
    y = [i.is_fraud for i in late]
    assert sum(y) >= 30 and all(i.pattern in (None, "stolen_card_abroad") for i in late)
    learning = [records[i.tx.tx_id]["scores"]["river"] for i in late]
    frozen_scores = [frozen.predict_proba_one([records[i.tx.tx_id]["features"][n] for n in MODEL_FEATURES])
                     for i in late]
    ap_learning, ap_frozen = average_precision(y, learning), average_precision(y, frozen_scores)
    print(f"drift: AP learning {ap_learning:.3f} vs frozen {ap_frozen:.3f} on {len(late)} tx, {sum(y)} frauds")
    assert ap_learning >= ap_frozen + 0.1 and ap_learning >= 1.5 * ap_frozen
