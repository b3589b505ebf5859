"""Entity profiles through a real worker on the real broker: merchant counts over every card that paid
there, a fraud label that changes the next score at its merchant within seconds (stream and HTTP), and
compromise evidence at the merchants the defrauded card had paid at before."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from outputs import PARTITIONS, produce, read_until
from test_http_parity import call

from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.events import format_ts
from stream_app.settings import Settings

T0 = 1_767_225_600_000 + 10 * 3_600_000  # 2026-01-01T10:00Z
MINUTE = 60_000


def tx(tx_id: str, card: str, merchant: str, minute: int, amount: float = 30.0) -> dict[str, Any]:
    return {"tx_id": tx_id, "card_id": card, "merchant_id": merchant, "amount": amount, "currency": "EUR",
            "timestamp": T0 + minute * MINUTE, "country": "FR", "channel": "pos", "mcc": "5411"}


def features_at(worker: WorkerProcess, merchant: str, minute: int, tag: str) -> dict[str, float]:
    status, answer = call(worker, "/score", orjson.dumps(tx(f"probe-{tag}", f"card_probe_{tag}", merchant, minute)))
    assert status == 200 and answer["status"] == "scored", answer
    return answer["features"]


def test_merchant_profiles_and_label_derived_risk(kafka_bootstrap: str, app_env: dict[str, str],
                                                  worker: WorkerProcess) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    # Eight cards pay at the shop (spread over the partitions, which Kafka does not order between: so the
    # first seven are scored before the eighth is sent); card_1 later pays at the skimmer's accomplice.
    history = [tx(f"shop-{i}", f"card_{i}", "m_shop", i) for i in range(8)]
    fraud = tx("fraud-1", "card_1", "m_fraud", 20, amount=400.0)
    scores: dict[str, dict[str, Any]] = {}
    for phase in (history[:7], [history[7], fraud]):
        messages = [(t["card_id"].encode(), orjson.dumps(t)) for t in phase]
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic, messages))
        ids = {t["tx_id"] for t in phase}
        out = asyncio.run(read_until(kafka_bootstrap, [s.scores_topic], PARTITIONS,
                                     lambda o, ids=ids: ids <= {r["tx_id"] for r in o.of(s.scores_topic)}, 120))
        scores.update({r["tx_id"]: r for r in out.of(s.scores_topic)})
    assert scores["shop-7"]["features"]["merchant_count_1d"] == 7  # the seven before it, from seven cards
    assert scores["shop-7"]["merchant_id"] == "m_shop"

    before = features_at(worker, "m_shop", 30, "before")
    assert before["merchant_count_1d"] == 8 and before["merchant_compromise_1d"] == 0
    assert 6.5 <= before["merchant_distinct_cards"] <= 9.5
    assert features_at(worker, "m_fraud", 30, "before-fraud")["merchant_fraud_labels_1d"] == 0

    label = {"tx_id": "fraud-1", "card_id": "card_1", "label": "fraud", "source": "chargeback",
             "label_time": format_ts(T0 + 25 * MINUTE)}
    published = time.monotonic()
    asyncio.run(produce(kafka_bootstrap, s.labels_topic, [(b"card_1", orjson.dumps(label))]))
    deadline = published + 60
    while time.monotonic() < deadline:
        after = features_at(worker, "m_fraud", 30, f"after-{int(time.monotonic() * 1000)}")
        if after["merchant_fraud_labels_1d"] == 1:
            break
        time.sleep(0.2)
    seconds = time.monotonic() - published
    assert after["merchant_fraud_labels_1d"] == 1, after
    print(f"label to merchant risk in {seconds:.2f} s")
    shop = features_at(worker, "m_shop", 30, "after-shop")
    assert shop["merchant_compromise_1d"] == 1, shop  # card_1 paid at m_shop before its fraud
    assert shop["merchant_fraud_labels_1d"] == 0

    # On the stream too: card_1's next payment sees its own fraud label and the merchant's.
    nxt = tx("next-1", "card_1", "m_fraud", 31)
    asyncio.run(produce(kafka_bootstrap, s.transactions_topic, [(b"card_1", orjson.dumps(nxt))]))
    out = asyncio.run(read_until(kafka_bootstrap, [s.scores_topic], PARTITIONS,
                                 lambda o: "next-1" in {r["tx_id"] for r in o.of(s.scores_topic)}, 60))
    record = next(r for r in out.of(s.scores_topic) if r["tx_id"] == "next-1")
    assert record["features"]["merchant_fraud_labels_1d"] == 1
    assert record["features"]["card_fraud_labels_30d"] == 1
    assert record["features"]["card_days_since_fraud_label"] < 1


def test_optional_entity_fields_are_validated_by_the_worker(kafka_bootstrap: str, app_env: dict[str, str],
                                                            worker: WorkerProcess) -> None:
    """device_id / ip / email_hash through the real worker: valid ones are scored (and never published in
    clear), bad ones dead-lettered with the field named."""
    import base64

    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    good = {**tx("opt-1", "card_opt", "m_opt", 1), "device_id": "phone-77", "ip": "203.0.113.9",
            "email_hash": "5f4dcc3b5aa765d61d8327deb882cf99"}
    bad = [{**tx("opt-2", "card_opt", "m_opt", 2), "ip": "999.1.1.1"},
           {**tx("opt-3", "card_opt", "m_opt", 3), "device_id": "has space"},
           {**tx("opt-4", "card_opt", "m_opt", 4), "email_hash": "someone@example.com"}]
    asyncio.run(produce(kafka_bootstrap, s.transactions_topic, [(b"card_opt", orjson.dumps(t)) for t in [good, *bad]]))
    out = asyncio.run(read_until(kafka_bootstrap, [s.scores_topic, s.dlq_topic], PARTITIONS,
                                 lambda o: any(r["tx_id"] == "opt-1" for r in o.of(s.scores_topic))
                                 and len(o.of(s.dlq_topic)) >= len(bad), 120))
    record = next(r for r in out.of(s.scores_topic) if r["tx_id"] == "opt-1")
    assert b"203.0.113.9" not in orjson.dumps(record) and b"phone-77" not in orjson.dumps(record)
    dead = {orjson.loads(base64.b64decode(r["original_b64"]))["tx_id"]: (r["reason"], r["field"])
            for r in out.of(s.dlq_topic)}
    assert dead == {"opt-2": ("invalid_value", "ip"), "opt-3": ("invalid_value", "device_id"),
                    "opt-4": ("invalid_value", "email_hash")}
