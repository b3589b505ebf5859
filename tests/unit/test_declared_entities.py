"""Entities declared beyond the merchant (STREAM_APP_ENTITIES): one declaration for training, the stream's
records, HTTP and batch; personal ids only as keyed digests; a model of another set refused clearly."""

from __future__ import annotations

import csv
from pathlib import Path

import jsonschema
import orjson
import pytest

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.decision import Policy
from stream_app.domain.entities import EntityTable, FeatureSet, parse_entities
from stream_app.domain.events import Transaction, format_ts
from stream_app.domain.records import Source, score_record
from stream_app.domain.scoring import FraudScorer
from stream_app.models.onnx_model import ModelRejected, OnnxScorer
from stream_app.models.river_model import RiverScorer
from stream_app.offline.batch import run
from stream_app.offline.training import TrainConfig, train_and_export
from stream_app.settings import Settings
from stream_app.startup import StartupError
from stream_app.worker.entities import observation_of

DECLARED = "merchant:merchant_id,device:device_id,ip:ip"
T0 = 1_767_225_600_000


def tx(i: int, card: str, device: str | None, ip: str | None = None) -> Transaction:
    return Transaction(f"t{i}", card, "m1", 20.0, "EUR", T0 + i * 60_000, "FR", "ecom", "5411", device_id=device,
                       ip=ip)


def test_the_declaration_is_parsed_once_and_refused_clearly() -> None:
    assert [(s.name, s.field) for s in parse_entities(DECLARED)] == [("merchant", "merchant_id"),
                                                                     ("device", "device_id"), ("ip", "ip")]
    names = FeatureSet.parse(DECLARED).names
    assert "device_fraud_share_7d" in names and "ip_distinct_cards" in names
    for bad in ("merchant", "merchant:card_id", "Device:device_id", "a:ip,b:ip", "x:device_id,x:ip"):
        with pytest.raises(ValueError):
            parse_entities(bad)
    with pytest.raises(ValueError, match="STREAM_APP_ENTITIES: entity 'dev:phone'"):
        Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "x:9", "STREAM_APP_ENTITIES": "merchant:merchant_id,dev:phone"})


def test_personal_ids_are_keyed_digests_in_state_and_records_and_read_back_the_same() -> None:
    table = EntityTable(parse_entities(DECLARED), secret=b"k" * 16)
    t = tx(1, "c1", "phone-123", "203.0.113.7")
    keys = table.keys(t)
    assert keys["merchant"] == "m1" and "phone-123" not in keys.values() and "203.0.113.7" not in keys.values()
    assert EntityTable(parse_entities(DECLARED), secret=b"j" * 16).keys(t)["device"] != keys["device"]
    scored = FraudScorer(OnnxScorer.load(), RiverScorer(), Policy()).score_many([t], [[0.0] * 50])[0]
    record = orjson.loads(orjson.dumps(score_record(scored, Source("transactions", 0, 1, T0), T0,
                                                    table.personal_keys(t))))
    assert b"phone-123" not in orjson.dumps(record) and b"203.0.113.7" not in orjson.dumps(record)
    schema = orjson.loads((Path(__file__).parents[2] / "schemas" / "score.schema.json").read_bytes())
    jsonschema.Draft202012Validator(schema).validate(record)  # the published contract allows the digests
    assert observation_of(record, table).keys == keys  # another worker's replica files it under the same ids
    table.observe(table.observation(t))
    again = dict(zip(FeatureSet.parse(DECLARED).names[24:], table.features(tx(2, "c2", "phone-123")), strict=True))
    assert again["device_n_total"] == 1 and again["ip_n_total"] == 0  # the device seen on another card


def test_a_model_trained_on_declared_entities_serves_only_under_that_declaration(tmp_path: Path) -> None:
    data = tmp_path / "history.csv"
    items = list(simulate(GeneratorConfig(seed=3, n_customers=300), days=24))
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tx_id", "card_id", "merchant_id", "amount", "currency", "timestamp", "country", "channel",
                         "mcc", "device_id", "is_fraud"])
        for i, x in enumerate(items):  # a fraud ring reuses a handful of devices; customers have their own
            device = f"ring{i % 3}" if x.is_fraud else f"dev-{x.tx.card_id}"
            writer.writerow([x.tx.tx_id, x.tx.card_id, x.tx.merchant_id, x.tx.amount, x.tx.currency,
                             format_ts(x.tx.ts_ms), x.tx.country, x.tx.channel, x.tx.mcc, device, int(x.is_fraud)])
    out = tmp_path / "model"
    card = train_and_export(TrainConfig(data_path=str(data), n_estimators=20, label_delay_days=3, test_days=6,
                                        output_dir=str(out), entities="merchant:merchant_id,device:device_id"))
    assert card["feature_set"] == "card+merchant:merchant_id+device:device_id/v2" and len(card["feature_names"]) == 74
    assert card["feature_stats"]["device_distinct_cards"]["fraud_mean"] > \
        card["feature_stats"]["device_distinct_cards"]["legit_mean"]  # the ring's devices serve many cards
    env = {"KAFKA_BOOTSTRAP_SERVERS": "x:9", "STREAM_APP_ONNX_MODEL": str(out / "fraud_gbt.onnx")}
    with pytest.raises(StartupError, match="this worker computes card\\+merchant:merchant_id/v2"):
        FraudScorer.from_settings(Settings.from_env(env))  # the default declaration: refused, saying why
    with pytest.raises(ModelRejected, match="trained on feature set card\\+merchant:merchant_id/v2"):
        OnnxScorer.load(None, FeatureSet.parse("merchant:merchant_id,device:device_id"))  # and the reverse
    scorer = FraudScorer.from_settings(Settings.from_env({**env, "STREAM_APP_ENTITIES": "merchant:merchant_id,"
                                                                                         "device:device_id"}))
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(orjson.dumps({**tx(i, f"c{i}", "shared").to_json_dict()}).decode() + "\n"
                            for i in range(3)))
    run([(n, line.encode()) for n, line in enumerate(rows.read_text().splitlines(), 1)], tmp_path / "out.jsonl",
        scorer, horizon_ms=7 * 86_400_000, max_bytes=16384)
    scored = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["features"]["device_n_total"] for r in scored] == [0, 1, 2]  # batch profiles the declared device

