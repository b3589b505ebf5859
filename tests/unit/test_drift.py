"""Drift monitor on generated traffic scored by the shipped model: quiet on the training distribution,
from a cold start too, and loud (once) on shifted amounts or scores.

The reference is taken like training takes it, on a period of full card histories (days 30-40 of a
history). The live traffic is a cold start: a worker that meets the cards on day 5 with empty states
and runs for 45 days. Its history features are compared only once a card's state has watched it for
WARM_DAYS (``is_warm``): without that filter the cold start itself is reported as drift.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.drift import (
    CALENDAR_FEATURES,
    SCORE,
    TRANSACTION_ONLY_FEATURES,
    WARM_DAYS,
    DriftEvent,
    DriftMonitor,
    is_warm,
    reference_from_rows,
)
from stream_app.domain.entities import MODEL_FEATURES, N_MODEL_FEATURES
from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS, FEATURE_NAMES, WINDOWS, CardState, featurize
from stream_app.models.onnx_model import OnnxScorer, packaged_model_path
from stream_app.offline.replay import build_dataset, replay

HORIZON = 7 * 86_400_000
COLD_START_DAY = 5
BATCH = 500
AMOUNT_SCALED = ("amount_eur", *(f"{stat}_amount_{w}" for w in ("1d", "7d", "30d") for stat in ("mean", "std")))
UNTOUCHED_BY_AMOUNTS = (*(f"count_{w}" for w in WINDOWS), "seconds_since_prev", "amount_to_mean_30d",
                        "distinct_merchants_1d", "first_use_of_merchant", "country_changed", "is_ecom",
                        "is_atm", "is_moto")
HISTORY_FEATURES = tuple(n for n in MODEL_FEATURES if n not in TRANSACTION_ONLY_FEATURES)

Traffic = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows [n, N_MODEL_FEATURES] float32, scores [n], warm [n] bool


def _scored(x: np.ndarray, warm: np.ndarray, scorer: OnnxScorer) -> Traffic:
    return x, np.asarray(scorer.predict_proba_many(x.tolist())), warm


@pytest.fixture(scope="module")
def data() -> dict[str, Traffic]:
    scorer = OnnxScorer.load()
    config = GeneratorConfig(seed=1, n_customers=500)
    history = build_dataset(config, days=40, horizon_ms=HORIZON, progress=False)
    held_out = (history.ts_ms - config.start_ms) // DAY_MS >= 30  # like training's test period
    live = GeneratorConfig(seed=2, n_customers=500)
    cold_from = live.start_ms + COLD_START_DAY * DAY_MS
    cold = replay(((i.tx, i.is_fraud) for i in simulate(live, days=50) if i.tx.ts_ms >= cold_from),
                  HORIZON, progress=False)
    traffic = {"training": _scored(history.x[held_out], history.warm[held_out], scorer),
               "live": _scored(cold.x, cold.warm, scorer)}
    assert traffic["training"][2].mean() > 0.9, "a month into the history, most cards are warm"
    assert len(cold.x) >= 40_000 and 0.2 < cold.warm.mean() < 0.5, (len(cold.x), cold.warm.mean())
    return traffic


@pytest.fixture(scope="module")
def reference(data: dict[str, Traffic]) -> dict:
    return reference_from_rows(*data["training"])


def _amounts_times(x: np.ndarray, factor: float) -> np.ndarray:
    shifted = x.copy()
    shifted[:, [MODEL_FEATURES.index(n) for n in AMOUNT_SCALED]] *= factor
    shifted[:, MODEL_FEATURES.index("log_amount")] = np.log1p(shifted[:, MODEL_FEATURES.index("amount_eur")])
    return shifted


def _run(monitor: DriftMonitor, x: np.ndarray, scores: np.ndarray,
         warm: np.ndarray) -> list[tuple[list[DriftEvent], dict]]:
    """Feed in micro-batches as the stream does; per batch: its events and the PSI after it."""
    out = []
    for start in range(0, len(x), BATCH):
        end = start + BATCH
        events = monitor.update_many(x[start:end].tolist(), scores[start:end].tolist(), warm[start:end].tolist())
        out.append((events, monitor.psi()))
    return out


def _detected(trace: Sequence[tuple[list[DriftEvent], dict]]) -> set[str]:
    return {e.name for events, _ in trace for e in events if e.detected}


def test_is_warm_after_warm_days_of_a_card_state_whatever_its_activity() -> None:
    t0 = 1_767_225_600_000
    tx = Transaction("t1", "c1", "m1", 10.0, "EUR", t0, "DE", "pos", "5411")
    states: dict = {}
    assert not is_warm(CardState(), t0)
    featurize(states, tx, HORIZON)
    state = states["c1"]
    assert state.first_ts == t0 and not is_warm(state, t0)
    later = Transaction("t2", "c1", "m2", 10.0, "EUR", t0 + WARM_DAYS * DAY_MS, "DE", "pos", "5411")
    assert is_warm(state, later.ts_ms) and not is_warm(state, later.ts_ms - 1)
    featurize(states, later, HORIZON)
    assert states["c1"].first_ts == t0, "set once: the flag is the same before and after a transaction"
    assert is_warm(state, t0 + 2 * DAY_MS, min_history_days=2)


def test_reference_is_json_with_its_filter_and_one_bin_per_value_of_discrete_features(reference: dict) -> None:
    assert json.loads(json.dumps(reference)) == reference
    features = reference["features"]
    assert list(features) == list(MODEL_FEATURES) and SCORE in reference
    assert reference["filter"]["name"] == "warm_card" and reference["filter"]["min_history_days"] == WARM_DAYS
    assert set(reference["filter"]["applies_to"]) == {*HISTORY_FEATURES, SCORE}
    assert features["weekday"]["edges"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert features["is_atm"]["edges"] == [0.0]
    for hist in [*features.values(), reference[SCORE]]:
        assert len(hist["proportions"]) == len(hist["edges"]) + 1
        assert hist["edges"] == sorted(set(hist["edges"]))
        assert min(hist["proportions"]) > 0 and sum(hist["proportions"]) == pytest.approx(1.0)
    assert len(features["amount_eur"]["edges"]) == 9


def test_history_features_come_from_warm_rows_only() -> None:
    x = np.zeros((1000, N_MODEL_FEATURES), dtype=np.float32)
    x[:, MODEL_FEATURES.index("count_30d")] = np.where(np.arange(1000) < 600, 0.0, 5.0)  # cold rows: no history
    x[:, MODEL_FEATURES.index("merchant_count_30d")] = np.where(np.arange(1000) < 600, 0.0, 7.0)  # likewise
    x[:, MODEL_FEATURES.index("amount_eur")] = np.arange(1000) % 2
    warm = np.arange(1000) >= 600
    features = reference_from_rows(x, None, warm)["features"]
    assert features["count_30d"]["proportions"] == [1.0]  # only the warm rows' 5.0
    assert features["merchant_count_30d"]["proportions"] == [1.0]  # entity features: warm rows too
    assert features["amount_eur"]["proportions"] == [0.5, 0.5]  # every row
    scores = np.full(1000, 0.5)
    cold_only = reference_from_rows(x, scores, np.zeros(1000, dtype=bool))  # a history shorter than WARM_DAYS
    assert set(cold_only["features"]) == set(TRANSACTION_ONLY_FEATURES) and SCORE not in cold_only
    monitor = DriftMonitor(cold_only, min_count=10)
    assert monitor.update_many(x[:20], scores[:20], [True] * 20) == [] and set(monitor.psi()) == {
        "amount_eur", "log_amount", "is_ecom", "is_atm", "is_moto"}


def test_a_point_mass_at_the_maximum_gets_its_own_bin() -> None:
    x = np.zeros((1000, N_MODEL_FEATURES), dtype=np.float32)
    x[:, 0] = np.concatenate([np.arange(800), np.full(200, 1e4)])  # 20 % at the maximum
    hist = reference_from_rows(x, None, np.ones(1000, dtype=bool))["features"]["amount_eur"]
    assert hist["edges"][-1] < 1e4 and hist["proportions"][-1] == pytest.approx(0.2)


def test_unshifted_traffic_from_a_cold_start_never_fires(data: dict[str, Traffic], reference: dict) -> None:
    x, scores, warm = data["live"]
    trace = _run(DriftMonitor(reference), x, scores, warm)
    assert [e for events, _ in trace for e in events] == []
    first_month = trace[: int(np.argmax(np.cumsum(warm) >= 1000)) // BATCH]
    assert first_month and all(set(psi) <= set(TRANSACTION_ONLY_FEATURES) for _, psi in first_month), \
        "history features are not judged before 1000 rows of warm cards"
    names = set(trace[-1][1])
    assert names == (set(FEATURE_NAMES) - set(CALENDAR_FEATURES)) | {SCORE}  # entity features: not monitored
    assert max(max(psi.values()) for _, psi in trace if psi) < 0.2


def test_without_the_filter_a_cold_start_fires_on_history_features(
        data: dict[str, Traffic], reference: dict) -> None:
    """What a fresh worker reported before the filter: its own empty card states, as drift."""
    x, scores, warm = data["live"]
    detected = _detected(_run(DriftMonitor(reference), x, scores, np.ones_like(warm)))
    assert {"count_7d", "count_30d", "seconds_since_prev", "first_use_of_merchant", SCORE} <= detected
    assert detected.isdisjoint(TRANSACTION_ONLY_FEATURES)


def test_amounts_times_three_fire_from_a_cold_start(data: dict[str, Traffic], reference: dict) -> None:
    x, _, warm = data["live"]
    shifted = _amounts_times(x, 3.0)
    scores = np.asarray(OnnxScorer.load().predict_proba_many(shifted.tolist()))
    trace = _run(DriftMonitor(reference), shifted, scores, warm)
    first = {e.name: i for i, (events, _) in enumerate(trace) for e in events if e.detected}
    assert {"amount_eur", "log_amount"} <= set(first)
    assert max(first["amount_eur"], first["log_amount"]) <= 2, "as soon as 1000 rows are in, before any card is warm"
    assert set(AMOUNT_SCALED) <= set(first), "the history amount features once cards are warm"
    assert set(first).isdisjoint(UNTOUCHED_BY_AMOUNTS)


def test_score_shift_fires_score_only(data: dict[str, Traffic], reference: dict) -> None:
    x, scores, warm = data["live"]
    recalibrated = np.sqrt(scores)  # a model whose scores mean something else, on the same traffic
    assert _detected(_run(DriftMonitor(reference), x, recalibrated, warm)) == {SCORE}


def test_detection_is_reported_once_and_resolved_below_half_the_threshold(
        data: dict[str, Traffic], reference: dict) -> None:
    x, scores, warm = data["live"]
    x, scores = x[warm], scores[warm]
    # 14 % of the scores recalibrated: a PSI between half the threshold and the threshold.
    partly = np.where(np.random.default_rng(0).random(len(scores)) < 0.14, np.sqrt(scores), scores)
    phases = [(2000, scores), (4000, np.sqrt(scores)), (5500, partly), (4000, scores)]  # of the warm rows
    monitor = DriftMonitor(reference, psi_threshold=0.2)
    events, last_psi, start = [], [], 0
    for rows, stream in phases:
        trace = _run(monitor, x[start:start + rows], stream[start:start + rows], np.ones(rows, dtype=bool))
        events.append([(e.name, e.detected) for batch_events, _ in trace for e in batch_events])
        last_psi.append(trace[-1][1][SCORE])
        start += rows
    assert events == [[], [(SCORE, True)], [], [(SCORE, False)]]
    assert last_psi[1] >= 0.2 and 0.1 <= last_psi[2] < 0.2 and last_psi[3] < 0.1


def test_json_round_trip_gives_the_same_monitor(data: dict[str, Traffic], reference: dict) -> None:
    x, scores, warm = data["live"]
    shifted = np.concatenate([x[:8000], _amounts_times(x[8000:], 3.0)])
    original = _run(DriftMonitor(reference), shifted, scores, warm)
    restored = _run(DriftMonitor(json.loads(json.dumps(reference))), shifted, scores, warm)
    assert restored == original and _detected(original)


def test_window_counts_equal_a_fresh_count_whatever_the_batching(
        data: dict[str, Traffic], reference: dict) -> None:
    x, scores, _ = data["live"]
    every = np.ones(len(x), dtype=bool)
    rolled = DriftMonitor(reference, window=5000)
    start = 0
    for size in (37, 500, 1234, 3000, 6000, 999, 1):
        rolled.update_many(x[start:start + size], scores[start:start + size], every[start:start + size])
        start += size
    fresh = DriftMonitor(reference, window=5000)
    fresh.update_many(x[start - 5000:start], scores[start - 5000:start], every[start - 5000:start])
    assert rolled.psi() == pytest.approx(fresh.psi(), rel=1e-12, abs=1e-15)


def test_nothing_is_judged_before_min_count_rows_in_each_window(data: dict[str, Traffic], reference: dict) -> None:
    x, scores, warm_cards = data["live"]
    x, scores = x[warm_cards], scores[warm_cards]
    monitor = DriftMonitor(reference, min_count=1000)
    warm = np.arange(1200) % 2 == 0  # flagged as if half the rows were of cards not warm yet
    assert monitor.update_many(x[:600], np.sqrt(scores[:600]), warm[:600]) == [] and monitor.psi() == {}
    assert monitor.update_many(x[600:1200], np.sqrt(scores[600:1200]), warm[600:1200]) == []
    assert SCORE not in monitor.psi() and "amount_eur" in monitor.psi(), "600 warm rows: the score is not judged yet"
    assert [e.name for e in monitor.update_many(x[1200:2000], np.sqrt(scores[1200:2000]), [True] * 800)] == [SCORE]


def test_calendar_features_would_fire_on_a_window_shorter_than_a_week(
        data: dict[str, Traffic], reference: dict) -> None:
    detected = _detected(_run(DriftMonitor(reference, ignore=()), *data["live"]))
    assert "weekday" in detected


def test_refuses_rows_of_another_shape_and_a_reference_for_other_features_or_without_filter(
        reference: dict) -> None:
    monitor = DriftMonitor(reference)
    with pytest.raises(ValueError):
        monitor.update_many([[0.0] * (N_MODEL_FEATURES - 1)], [0.5], [True])
    with pytest.raises(ValueError):
        monitor.update_many([[0.0] * len(FEATURE_NAMES)], [0.5], [True])  # the card's features alone
    with pytest.raises(ValueError):
        monitor.update_many([[0.0] * N_MODEL_FEATURES], [0.5, 0.5], [True])
    with pytest.raises(ValueError):
        monitor.update_many([[0.0] * N_MODEL_FEATURES], [0.5], [True, False])
    stale = {**reference, "features": {k: v for k, v in reference["features"].items() if k != "is_moto"}}
    with pytest.raises(ValueError, match="is_moto"):
        DriftMonitor(stale)
    card_only = {**reference, "features": {k: reference["features"][k] for k in FEATURE_NAMES}}  # before entities
    with pytest.raises(ValueError, match="merchant_count_1h"):
        DriftMonitor(card_only)
    unfiltered = {k: v for k, v in reference.items() if k != "filter"}
    with pytest.raises(ValueError, match="warm_card"):
        DriftMonitor(unfiltered)
    with pytest.raises(ValueError):
        reference_from_rows(np.full((10, N_MODEL_FEATURES), np.nan), None, np.ones(10, dtype=bool))
    with pytest.raises(ValueError):
        reference_from_rows(np.zeros((10, len(FEATURE_NAMES))), None, np.ones(10, dtype=bool))


@pytest.mark.parametrize("model", ["fraud_gbt.onnx", "edge/fraud_gbt_edge.onnx"])
def test_shipped_cards_carry_a_filtered_reference_of_their_own_scores(model: str) -> None:
    """Rebuilt by ``rebuild_drift_reference`` from each card's own history: the edge model's score
    histogram is its own, not the main model's."""
    cards = {name: json.loads((packaged_model_path().parent / f"{name}.card.json").read_text())
             for name in ("fraud_gbt.onnx", "edge/fraud_gbt_edge.onnx")}
    reference = cards[model]["drift_reference"]
    assert DriftMonitor(reference).min_history_days == WARM_DAYS
    assert reference["filter"]["name"] == "warm_card" and 0 < reference["filter"]["rows"] <= reference["rows"]
    assert reference["rows"] == cards[model]["metrics"]["test"]["rows"]
    main, edge = (c["drift_reference"][SCORE] for c in cards.values())
    assert main != edge
