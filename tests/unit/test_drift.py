"""Drift monitor on generated traffic scored by the shipped model: quiet on the training distribution,
loud (once) on shifted amounts or scores.

The reference and the live traffic are taken after a 30-day warm-up: before it the 7 d / 30 d
features of every card are still filling up, which is itself a shift (see the cold-start test).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from stream_app.drift import CALENDAR_FEATURES, SCORE, DriftEvent, DriftMonitor, reference_from_rows
from stream_app.features import DAY_MS, FEATURE_NAMES, WINDOWS
from stream_app.generator import GeneratorConfig
from stream_app.models.onnx_model import OnnxScorer
from stream_app.training import build_dataset

HORIZON = 7 * 86_400_000
WARM_DAYS = 30  # the 30 d windows are full from here on
BATCH = 500
AMOUNT_SCALED = ("amount_eur", *(f"{stat}_amount_{w}" for w in ("1d", "7d", "30d") for stat in ("mean", "std")))
UNTOUCHED_BY_AMOUNTS = (*(f"count_{w}" for w in WINDOWS), "seconds_since_prev", "amount_to_mean_30d",
                        "distinct_merchants_1d", "first_use_of_merchant", "country_changed", "is_ecom",
                        "is_atm", "is_moto")

Traffic = tuple[np.ndarray, np.ndarray]  # rows [n, 24] float32, scores [n]


def _traffic(seed: int, days: int, scorer: OnnxScorer) -> tuple[Traffic, Traffic]:
    """(cold: the first 10 days, steady: from WARM_DAYS on), each with the shipped model's scores."""
    config = GeneratorConfig(seed=seed, n_customers=500)
    data = build_dataset(config, days=days, horizon_ms=HORIZON, progress=False)
    day = (data.ts_ms - config.start_ms) // DAY_MS
    cold, steady = data.x[day < 10], data.x[day >= WARM_DAYS]
    return ((cold, np.asarray(scorer.predict_proba_many(cold.tolist()))),
            (steady, np.asarray(scorer.predict_proba_many(steady.tolist()))))


@pytest.fixture(scope="module")
def data() -> dict[str, Traffic]:
    scorer = OnnxScorer.load()
    cold, training = _traffic(1, 40, scorer)
    _, live = _traffic(2, 50, scorer)
    assert len(training[0]) > 10_000 and len(live[0]) >= 20_000
    return {"cold": cold, "training": training, "live": live}


@pytest.fixture(scope="module")
def reference(data: dict[str, Traffic]) -> dict:
    return reference_from_rows(*data["training"])


def _amounts_times(x: np.ndarray, factor: float) -> np.ndarray:
    shifted = x.copy()
    shifted[:, [FEATURE_NAMES.index(n) for n in AMOUNT_SCALED]] *= factor
    shifted[:, FEATURE_NAMES.index("log_amount")] = np.log1p(shifted[:, FEATURE_NAMES.index("amount_eur")])
    return shifted


def _run(monitor: DriftMonitor, x: np.ndarray, scores: np.ndarray) -> list[tuple[list[DriftEvent], dict]]:
    """Feed in micro-batches as the stream does; per batch: its events and the PSI after it."""
    out = []
    for start in range(0, len(x), BATCH):
        events = monitor.update_many(x[start:start + BATCH].tolist(), scores[start:start + BATCH].tolist())
        out.append((events, monitor.psi()))
    return out


def _detected(trace: Sequence[tuple[list[DriftEvent], dict]]) -> set[str]:
    return {e.name for events, _ in trace for e in events if e.detected}


def test_reference_is_json_with_one_bin_per_value_of_discrete_features(reference: dict) -> None:
    assert json.loads(json.dumps(reference)) == reference
    features = reference["features"]
    assert list(features) == list(FEATURE_NAMES) and SCORE in reference
    assert features["weekday"]["edges"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert features["is_atm"]["edges"] == [0.0]
    for hist in [*features.values(), reference[SCORE]]:
        assert len(hist["proportions"]) == len(hist["edges"]) + 1
        assert hist["edges"] == sorted(set(hist["edges"]))
        assert min(hist["proportions"]) > 0 and sum(hist["proportions"]) == pytest.approx(1.0)
    assert len(features["amount_eur"]["edges"]) == 9


def test_a_point_mass_at_the_maximum_gets_its_own_bin() -> None:
    x = np.zeros((1000, 24), dtype=np.float32)
    x[:, 0] = np.concatenate([np.arange(800), np.full(200, 1e4)])  # 20 % at the maximum
    hist = reference_from_rows(x)["features"]["amount_eur"]
    assert hist["edges"][-1] < 1e4 and hist["proportions"][-1] == pytest.approx(0.2)


def test_unshifted_traffic_never_fires(data: dict[str, Traffic], reference: dict) -> None:
    trace = _run(DriftMonitor(reference), *data["live"])
    assert [e for events, _ in trace for e in events] == []
    names = set(trace[-1][1])
    assert names == (set(FEATURE_NAMES) - set(CALENDAR_FEATURES)) | {SCORE}
    assert max(max(psi.values()) for _, psi in trace if psi) < 0.1


def test_amounts_times_three_fire_amount_features_only(data: dict[str, Traffic], reference: dict) -> None:
    x, _ = data["live"]
    shifted = _amounts_times(x, 3.0)
    scores = np.asarray(OnnxScorer.load().predict_proba_many(shifted.tolist()))
    detected = _detected(_run(DriftMonitor(reference), shifted, scores))
    assert set(AMOUNT_SCALED) | {"log_amount"} <= detected
    assert detected.isdisjoint(UNTOUCHED_BY_AMOUNTS)


def test_score_shift_fires_score_only(data: dict[str, Traffic], reference: dict) -> None:
    x, scores = data["live"]
    recalibrated = np.sqrt(scores)  # a model whose scores mean something else, on the same traffic
    assert _detected(_run(DriftMonitor(reference), x, recalibrated)) == {SCORE}


def test_detection_is_reported_once_and_resolved_below_half_the_threshold(
        data: dict[str, Traffic], reference: dict) -> None:
    x, scores = data["live"]
    # 14 % of the scores recalibrated: a PSI between half the threshold and the threshold.
    partly = np.where(np.random.default_rng(0).random(len(scores)) < 0.14, np.sqrt(scores), scores)
    phases = [(3000, scores), (5000, np.sqrt(scores)), (7000, partly), (6000, scores)]
    monitor = DriftMonitor(reference, psi_threshold=0.2)
    events, last_psi, start = [], [], 0
    for rows, stream in phases:
        trace = _run(monitor, x[start:start + rows], stream[start:start + rows])
        events.append([(e.name, e.detected) for batch_events, _ in trace for e in batch_events])
        last_psi.append(trace[-1][1][SCORE])
        start += rows
    assert events == [[], [(SCORE, True)], [], [(SCORE, False)]]
    assert last_psi[1] >= 0.2 and 0.1 <= last_psi[2] < 0.2 and last_psi[3] < 0.1


def test_json_round_trip_gives_the_same_monitor(data: dict[str, Traffic], reference: dict) -> None:
    x, scores = data["live"]
    shifted = np.concatenate([x[:8000], _amounts_times(x[8000:], 3.0)])
    original = _run(DriftMonitor(reference), shifted, scores)
    restored = _run(DriftMonitor(json.loads(json.dumps(reference))), shifted, scores)
    assert restored == original and _detected(original)


def test_window_counts_equal_a_fresh_count_whatever_the_batching(
        data: dict[str, Traffic], reference: dict) -> None:
    x, scores = data["live"]
    rolled = DriftMonitor(reference, window=5000)
    start = 0
    for size in (37, 500, 1234, 3000, 6000, 999, 1):
        rolled.update_many(x[start:start + size], scores[start:start + size])
        start += size
    fresh = DriftMonitor(reference, window=5000)
    fresh.update_many(x[start - 5000:start], scores[start - 5000:start])
    assert rolled.psi() == pytest.approx(fresh.psi(), rel=1e-12, abs=1e-15)


def test_nothing_is_judged_before_min_count_rows(data: dict[str, Traffic], reference: dict) -> None:
    x, scores = data["live"]
    monitor = DriftMonitor(reference, min_count=1000)
    assert monitor.update_many(x[:600], np.sqrt(scores[:600])) == [] and monitor.psi() == {}
    assert [e.name for e in monitor.update_many(x[600:1200], np.sqrt(scores[600:1200]))] == [SCORE]


def test_cold_start_reference_sees_the_warm_up_as_drift(data: dict[str, Traffic]) -> None:
    """A reference from the first days of a history (cards without a month of past) disagrees with
    traffic of established cards on the long-window features: build it from warmed-up rows."""
    detected = _detected(_run(DriftMonitor(reference_from_rows(*data["cold"])), *data["live"]))
    assert {"count_30d", "std_amount_30d"} <= detected


def test_calendar_features_would_fire_on_a_window_shorter_than_a_week(
        data: dict[str, Traffic], reference: dict) -> None:
    detected = _detected(_run(DriftMonitor(reference, ignore=()), *data["live"]))
    assert "weekday" in detected


def test_refuses_rows_of_another_shape_and_a_reference_for_other_features(reference: dict) -> None:
    monitor = DriftMonitor(reference)
    with pytest.raises(ValueError):
        monitor.update_many([[0.0] * 23], [0.5])
    with pytest.raises(ValueError):
        monitor.update_many([[0.0] * 24], [0.5, 0.5])
    stale = {**reference, "features": {k: v for k, v in reference["features"].items() if k != "is_moto"}}
    with pytest.raises(ValueError, match="is_moto"):
        DriftMonitor(stale)
    with pytest.raises(ValueError):
        reference_from_rows(np.full((10, 24), np.nan))
