"""The two scorers and the scoring core, on generated data the shipped model has never seen."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.decision import Policy
from stream_app.domain.entities import FEATURE_SET, MODEL_FEATURES, N_MODEL_FEATURES
from stream_app.domain.features import FEATURE_NAMES
from stream_app.domain.scoring import FraudScorer
from stream_app.models.onnx_model import ModelRejected, OnnxScorer, card_path, packaged_model_path
from stream_app.models.river_model import RiverScorer
from stream_app.offline.evaluation import average_precision, roc_auc
from stream_app.offline.replay import replay

HORIZON = 7 * 86_400_000


@pytest.fixture(scope="module")
def fresh_data() -> tuple[list, list[list[float]], np.ndarray]:
    """The vectors the stream would feed the models: replayed with labels arriving a week later."""
    items = list(simulate(GeneratorConfig(seed=1234, n_customers=500, fraud_rate=0.02), days=12))
    data = replay(((i.tx, i.is_fraud) for i in items), HORIZON, progress=False)
    assert data.x.shape == (len(items), N_MODEL_FEATURES)
    return items, data.x.tolist(), np.array([i.is_fraud for i in items])


def test_shipped_onnx_model_ranks_unseen_fraud_high(fresh_data) -> None:  # type: ignore[no-untyped-def]
    _, rows, y = fresh_data
    scores = OnnxScorer.load().predict_proba_many(rows)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert roc_auc(y, scores) > 0.95 and average_precision(y, scores) > 0.6


def test_single_and_batch_scoring_agree(fresh_data) -> None:  # type: ignore[no-untyped-def]
    _, rows, _ = fresh_data
    onnx = OnnxScorer.load()
    batch = onnx.predict_proba_many(rows[:50])
    assert batch == pytest.approx([onnx.predict_proba_one(r) for r in rows[:50]], abs=1e-6)


def test_model_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(packaged_model_path(), model)
    shutil.copy(card_path(packaged_model_path()), card_path(model))
    with model.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelRejected, match="sha256"):
        OnnxScorer.load(model)


def test_model_with_other_feature_order_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(packaged_model_path(), model)
    card = json.loads(card_path(packaged_model_path()).read_text())
    card["feature_names"] = list(reversed(MODEL_FEATURES))
    card_path(model).write_text(json.dumps(card))
    expected = (f"names feature set {FEATURE_SET} but lists other features or another order than this code's: "
                "retrain it with `stream-app train`")
    with pytest.raises(ModelRejected, match=re.escape(expected)):
        OnnxScorer.load(model)


def test_model_trained_before_entity_features_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A card from before the feature sets: the card's features alone, no feature_set."""
    model = tmp_path / "m.onnx"
    shutil.copy(packaged_model_path(), model)
    card = json.loads(card_path(packaged_model_path()).read_text())
    card["feature_names"] = list(FEATURE_NAMES)
    del card["feature_set"]
    card_path(model).write_text(json.dumps(card))
    with pytest.raises(ModelRejected) as info:
        OnnxScorer.load(model)
    assert str(info.value) == (
        f"{model}: trained on feature set card/v1 (no feature_set in its card), this worker computes {FEATURE_SET} "
        f"({N_MODEL_FEATURES} features, STREAM_APP_ENTITIES): retrain it with `stream-app train` under the same "
        "STREAM_APP_ENTITIES")


def test_model_card_describes_the_shipped_model() -> None:
    card = json.loads(card_path(packaged_model_path()).read_text())
    assert card["feature_names"] == list(MODEL_FEATURES) and card["feature_set"] == FEATURE_SET
    assert card["input"]["shape"] == [None, N_MODEL_FEATURES]
    assert card["metrics"]["test"]["roc_auc"] > 0.9 and card["onnx_parity_max_abs_diff"] < 1e-4
    assert {"train", "test"} <= set(card["training_data"]["periods_days"])
    assert card["code"]["command"].startswith("stream-app train")


def test_river_learns_from_labels(fresh_data) -> None:  # type: ignore[no-untyped-def]
    items, rows, y = fresh_data
    half = len(rows) // 2
    river = RiverScorer()
    before = river.predict_proba_many(rows[half:])
    for row, label in zip(rows[:half], y[:half], strict=True):
        river.learn_one(row, bool(label))
    after = river.predict_proba_many(rows[half:])
    assert river.n_learned == half and river.version.endswith(f"@{half}")
    assert average_precision(y[half:], after) > average_precision(y[half:], before) + 0.2


def test_scorer_core_combines_and_decides(fresh_data) -> None:  # type: ignore[no-untyped-def]
    items, rows, y = fresh_data
    policy = Policy(river_warmup_labels=100)
    scorer = FraudScorer(OnnxScorer.load(), RiverScorer(), policy)
    out = scorer.score_many([i.tx for i in items[:300]], rows[:300])
    for s in out:
        assert s.risk == pytest.approx(s.onnx_score)  # River has not learned: no say yet
        assert s.decision == policy.decide(s.risk)
    alerts = [s for s in scorer.score_many([i.tx for i in items], rows) if s.is_alert]
    assert sum(s.tx.tx_id in {i.tx.tx_id for i in items if i.is_fraud} for s in alerts) > 0.5 * len(alerts)


def test_batched_river_and_stacker_equal_their_row_by_row_predictions(fresh_data) -> None:  # type: ignore[no-untyped-def]
    """The vectorized micro-batch paths read the learned state; they must answer what River's own
    predict_proba_one answers, before learning (all zero), after learning, and with a constant feature."""
    from stream_app.models.stacker import Stacker

    _, rows, y = fresh_data
    river, stacker = RiverScorer(), Stacker(warmup=0)
    probe = rows[:300]
    onnx = [min(0.999, max(0.001, r[0] / 1000)) for r in probe]
    for step in range(3):
        batched = river.predict_proba_many(probe)
        single = [river.predict_proba_one(r) for r in probe]
        np.testing.assert_allclose(batched, single, rtol=0, atol=1e-12)
        stacked = stacker.predict_proba_many(probe, onnx, batched)
        one_by_one = [stacker.predict_proba_one(r, o, b) for r, o, b in zip(probe, onnx, batched, strict=True)]
        np.testing.assert_allclose(stacked, one_by_one, rtol=0, atol=1e-12)
        for row, label in list(zip(rows, y, strict=True))[step * 2000:(step + 1) * 2000]:
            river.learn_one([*row[:-1], 1.0], bool(label))  # the last feature stays constant: zero variance
            stacker.learn_one(row, {"onnx": 0.5, "river": 0.2}, bool(label))
    assert len(set(np.round(batched, 6))) > 10, "the learned model separates rows"
    river.learn_many(rows[-200:], [bool(v) for v in y[-200:]])  # the arrays read from River's state are read again
    np.testing.assert_allclose(river.predict_proba_many(probe), [river.predict_proba_one(r) for r in probe],
                               rtol=0, atol=1e-12)
    assert river.predict_proba_many(probe) != batched
