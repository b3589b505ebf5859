"""Zero-amount transactions (card verifications) through a real worker on the real broker: the stream
scores them with finite features, POST /score answers "scored", and only the negative amount and the one
below the smallest minor unit are dead-lettered (``invalid_value``)."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import orjson
from outputs import PARTITIONS, produce, read_until
from test_http_parity import call

from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.features import FEATURE_NAMES
from stream_app.settings import Settings

T0 = 1_767_225_600_000  # 2026-01-01


def tx(tx_id: str, card: str, amount: float, minute: int) -> dict[str, Any]:
    return {"tx_id": tx_id, "card_id": card, "merchant_id": "m_1", "amount": amount, "currency": "EUR",
            "timestamp": T0 + minute * 60_000, "country": "FR", "channel": "ecom", "mcc": "5411"}


def test_zero_amounts_are_scored_on_the_stream_and_over_http(kafka_bootstrap: str, app_env: dict[str, str],
                                                             worker: WorkerProcess) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    valid = [tx("z-1", "card_zero", 0.0, 0), tx("z-2", "card_zero", 0, 1), tx("z-3", "card_zero", 0.0, 2),
             tx("z-4", "card_zero", 250.0, 3),  # a payment after verifications only
             tx("p-1", "card_paid", 40.0, 0), tx("p-2", "card_paid", 0.0, 1)]  # a verification after a payment
    bad = [tx("n-1", "card_zero", -0.01, 4), tx("t-1", "card_zero", 0.0005, 5)]
    asyncio.run(produce(kafka_bootstrap, s.transactions_topic,
                        [(t["card_id"].encode(), orjson.dumps(t)) for t in [*valid, *bad]]))
    ids = {t["tx_id"] for t in valid}

    def done(o: Any) -> bool:
        return ids <= {r["tx_id"] for r in o.of(s.scores_topic)} and len(o.of(s.dlq_topic)) >= len(bad)

    out = asyncio.run(read_until(kafka_bootstrap, [s.scores_topic, s.dlq_topic], PARTITIONS, done, 120))
    scores = {r["tx_id"]: r for r in out.of(s.scores_topic)}
    assert set(scores) == ids, sorted(scores)
    for record in scores.values():
        values = [record["features"][n] for n in FEATURE_NAMES]
        assert all(isinstance(v, float | int) and math.isfinite(v) for v in values), record["features"]
        assert 0 <= record["risk_score"] <= 1
    assert scores["z-3"]["features"]["amount_eur"] == 0.0 and scores["z-3"]["features"]["count_1h"] == 2
    assert scores["z-4"]["features"]["amount_to_mean_30d"] == 1.0  # no spending to compare with
    assert scores["p-2"]["features"]["amount_to_mean_30d"] == 0.0
    dead = {orjson.loads(base64.b64decode(r["original_b64"]))["tx_id"]: r for r in out.of(s.dlq_topic)}
    assert set(dead) == {"n-1", "t-1"}
    assert {(r["reason"], r["field"]) for r in dead.values()} == {("invalid_value", "amount")}

    status, answer = call(worker, "/score", orjson.dumps(tx("h-1", "card_http", 0.0, 10)))
    assert status == 200 and answer["status"] == "scored", answer
    assert answer["features"]["amount_eur"] == 0.0 and answer["features"]["log_amount"] == 0.0
    status, answer = call(worker, "/score", orjson.dumps(tx("h-2", "card_http", -1.0, 11)))
    assert status == 422 and [(i["reason"], i["field"]) for i in answer["items"]] == [("invalid_value", "amount")]
