"""Zero-amount transactions (card verifications, 0.00) are valid; amounts between 0 and the smallest minor
unit (0.001) are not. Whatever mix of zero, tiny and normal amounts a card sends, every feature the worker
computes, every model score and every drift PSI stays finite."""

from __future__ import annotations

import csv
import math
from functools import cache
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream_app.cli import main
from stream_app.domain.drift import DriftMonitor
from stream_app.domain.events import EUR_RATES, MIN_AMOUNT, NO_PAN_KEY, InvalidEvent, parse_transaction
from stream_app.domain.features import DAY_MS, FEATURE_NAMES, CardState, featurize
from stream_app.domain.ingress import Ingress
from stream_app.domain.records import Source, dead_letter_record
from stream_app.domain.schemas import load_schema
from stream_app.models.onnx_model import OnnxScorer
from stream_app.models.river_model import RiverScorer
from stream_app.offline.batch import errors_path

T0 = 1_767_225_600_000  # 2026-01-01
HORIZON_MS = 7 * DAY_MS
TOPIC = "transactions"
INGRESS = Ingress(max_bytes=16384, horizon_ms=HORIZON_MS, pans=NO_PAN_KEY, input_topic=TOPIC, partitions=1)


def body(amount: float, i: int = 1, ts_ms: int = T0, currency: str = "EUR") -> bytes:
    return orjson.dumps({"tx_id": f"tx-{i}", "card_id": "card_1", "merchant_id": f"m_{i % 3}", "amount": amount,
                         "currency": currency, "timestamp": ts_ms, "country": "FR", "channel": "ecom",
                         "mcc": "5411"})


def named(row: list[float]) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, row, strict=True))


@cache
def onnx() -> OnnxScorer:
    return OnnxScorer.load()


@pytest.mark.parametrize("amount", [0, 0.0, -0.0])
def test_a_zero_amount_parses_as_zero(amount: float) -> None:
    tx = parse_transaction(body(amount))
    assert tx.amount == 0.0 and math.copysign(1.0, tx.amount) == 1.0  # -0.0 is echoed as 0.0
    assert tx.amount_eur == 0.0 and parse_transaction(tx.to_bytes()) == tx
    jsonschema.Draft202012Validator(load_schema("transaction")).validate(orjson.loads(body(amount)))


@pytest.mark.parametrize("amount", [-0.01, -5.0, -1e9, -5e-324])
def test_a_negative_amount_is_dead_lettered_as_invalid_value(amount: float) -> None:
    outcome = INGRESS(body(amount), b"card_1", TOPIC, {}, lambda _card: None, partition=0)
    assert outcome.kind == "dead_lettered" and outcome.error is not None
    record = dead_letter_record(body(amount), outcome.error, Source(TOPIC, 0, 7, T0), b"card_1", T0)
    assert (record["reason"], record["field"]) == ("invalid_value", "amount")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(min_value=-1e10, max_value=1e10), st.sampled_from([0.0, -0.0, MIN_AMOUNT, 5e-324])))
def test_the_schema_accepts_exactly_what_the_parser_accepts(amount: float) -> None:
    valid = jsonschema.Draft202012Validator(load_schema("transaction")).is_valid(orjson.loads(body(amount)))
    try:
        parse_transaction(body(amount))
    except InvalidEvent as exc:
        assert not valid and exc.reason == "invalid_value"
    else:
        assert valid


def test_a_card_with_only_zero_amounts() -> None:
    """A zero mean gives no spending to compare with: the ratio is 1.0, as for a card's first payment."""
    states: dict[str, CardState] = {}
    for i in range(5):
        f = named(featurize(states, parse_transaction(body(0.0, i, T0 + i * 60_000)), HORIZON_MS))
        assert f["amount_eur"] == f["log_amount"] == 0.0 and f["amount_to_mean_30d"] == 1.0
        assert f["mean_amount_1h"] == f["std_amount_30d"] == 0.0 and f["count_1h"] == i
    paid = named(featurize(states, parse_transaction(body(500.0, 9, T0 + DAY_MS)), HORIZON_MS))
    assert paid["amount_to_mean_30d"] == 1.0 and paid["count_30d"] == 5 and paid["mean_amount_30d"] == 0.0
    zero = named(featurize(states, parse_transaction(body(0.0, 10, T0 + DAY_MS + 1)), HORIZON_MS))
    assert zero["amount_to_mean_30d"] == 0.0 and zero["mean_amount_30d"] == pytest.approx(500 / 6)
    assert zero["std_amount_30d"] > 0 and zero["log_amount"] == 0.0


AMOUNTS = st.one_of(
    st.just(0.0),  # a card verification
    st.floats(min_value=0.0, max_value=0.01, exclude_min=True),  # tiny: denormals, sub-minor-unit, 0.001-0.01
    st.just(MIN_AMOUNT),  # the smallest valid positive amount (in NGN, the smallest rate: 5.8e-7 EUR)
    st.floats(min_value=0.01, max_value=1e9),  # normal, up to MAX_AMOUNT
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(AMOUNTS, st.sampled_from(sorted(EUR_RATES)), st.integers(0, 3 * DAY_MS)),
                min_size=1, max_size=40))
@example([(5e-324, "EUR", 0), (100.0, "EUR", 1000)])  # the fuzzer's finding: an infinite amount-to-mean ratio
@example([(0.0, "EUR", 0), (0.0, "USD", 1000), (MIN_AMOUNT, "NGN", 1000), (1e9, "GBP", 1000)])
def test_any_mix_of_zero_tiny_and_normal_amounts_gives_finite_features_scores_and_drift(
        txs: list[tuple[float, str, int]]) -> None:
    """One card's transactions through the worker's ingress (parse, features), then the shipped ONNX model,
    the online model learning and scoring every row, and the drift monitor with the shipped reference."""
    states: dict[str, CardState] = {}
    rows = []
    ts = T0
    for i, (amount, currency, step) in enumerate(txs):
        ts += step
        outcome = INGRESS(body(amount, i, ts, currency), b"card_1", TOPIC, states, lambda _card: None,
                          partition=0)
        if 0 < amount < MIN_AMOUNT:  # below the smallest minor unit: refused, never reaches the card
            assert outcome.kind == "dead_lettered" and outcome.error is not None
            assert outcome.error.reason == "invalid_value"
            continue
        assert outcome.kind == "scored" and outcome.row is not None
        rows.append(outcome.row)
    if not rows:
        return
    x = np.asarray(rows, dtype=np.float64)
    assert np.isfinite(x).all() and np.isfinite(x.astype(np.float32)).all()  # models and drift see float32
    river = RiverScorer()
    for j, row in enumerate(rows):
        river.learn_one(row, j % 2 == 0)
    scores = np.asarray([onnx().predict_proba_many(x), river.predict_proba_many(x)])
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    monitor = DriftMonitor(onnx().card["drift_reference"], window=64, min_count=1)
    monitor.update_many(rows, scores[0].tolist(), [True] * len(rows))
    psi = monitor.psi()
    assert psi and all(math.isfinite(v) for v in psi.values())


def test_stream_app_batch_scores_zero_amounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stream-app batch` on a CSV (amounts as text, as a spreadsheet writes them): 0.00 and 0 are scored,
    -1 and 0.0005 land in the errors file as invalid_value."""
    monkeypatch.setenv("STREAM_APP_DATA_DIR", str(tmp_path / "data"))
    amounts = ["0.00", "0", "25.00", "-1", "0.0005", "0.00"]
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tx_id", "card_id", "merchant_id", "amount", "currency", "timestamp", "country",
                         "channel", "mcc"])
        writer.writerows([f"b-{i}", "card_1", "m_1", a, "EUR", T0 + i * 60_000, "FR", "ecom", "5411"]
                         for i, a in enumerate(amounts))
    output = tmp_path / "out.jsonl"
    assert main(["batch", "--input", str(source), "--output", str(output)]) == 0
    scored = {r["tx_id"]: r for r in map(orjson.loads, output.read_bytes().splitlines())}
    assert set(scored) == {"b-0", "b-1", "b-2", "b-5"}
    assert all(math.isfinite(v) for r in scored.values() for v in r["features"].values())
    assert scored["b-1"]["features"]["amount_to_mean_30d"] == 1.0  # a zero mean: nothing to compare with
    assert scored["b-5"]["features"]["amount_to_mean_30d"] == 0.0
    refused = [orjson.loads(line) for line in errors_path(output).read_bytes().splitlines()]
    assert [(e["row"], e["reason"], e["field"]) for e in refused] == [(4, "invalid_value", "amount"),
                                                                      (5, "invalid_value", "amount")]
