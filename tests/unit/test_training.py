"""Training on a small generated history: a temporal split, an ONNX file the server accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.evaluation import average_precision, roc_auc
from stream_app.models.onnx_model import OnnxScorer
from stream_app.training import TrainConfig, train_and_export


def test_train_exports_a_servable_model_with_honest_split(tmp_path: Path) -> None:
    card = train_and_export(TrainConfig(seed=3, n_customers=400, days=30, label_delay_days=5, test_days=8,
                                        n_estimators=40, output_dir=str(tmp_path)))
    periods = card["training_data"]["periods_days"]
    assert periods["train"][1] <= periods["gap (label delay)"][0] < periods["test"][0]
    assert periods["test"][0] - periods["train"][1] == 5
    assert card["metrics"]["test"]["roc_auc"] > 0.9
    assert card["onnx_parity_max_abs_diff"] < 1e-4
    scorer = OnnxScorer.load(tmp_path / "fraud_gbt.onnx")
    assert scorer.version == card["version"]


def test_metrics_against_known_values() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx((1 + 2 / 3) / 2)
