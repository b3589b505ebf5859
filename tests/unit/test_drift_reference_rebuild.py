"""Rebuilding the drift reference of an existing card: same data regenerated, model untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from stream_app.domain.drift import DriftMonitor
from stream_app.domain.entities import FEATURE_SET
from stream_app.offline.training import TrainConfig, rebuild_drift_reference, train_and_export

# 40 days, the last 8 tested: cards met on the first days are warm (30 days watched) in the test period.
# Labels arrive after 2 days, not the default 7: entity features are label-derived, so the rebuild must
# replay the labels as the training run did.
SMALL = dict(seed=5, n_customers=300, days=40, label_delay_days=2, test_days=8, n_estimators=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model")
    card = train_and_export(TrainConfig(**SMALL, output_dir=str(out)))
    return out / "fraud_gbt.onnx", card


def test_rebuild_reproduces_the_training_reference_without_touching_the_model(trained: tuple[Path, dict]) -> None:
    model, card = trained
    reference = card["drift_reference"]
    assert card["feature_set"] == FEATURE_SET
    assert 0 < reference["filter"]["rows"] < reference["rows"]
    DriftMonitor(reference)
    old = json.loads(json.dumps({**card, "drift_reference": {k: v for k, v in reference.items() if k != "filter"}},
                                default=str))  # a card from before the filter, as stored
    card_file = model.with_name(model.name + ".card.json")
    card_file.write_text(json.dumps(old, indent=2))
    with pytest.raises(ValueError, match="warm_card"):
        DriftMonitor(old["drift_reference"])
    digest = hashlib.sha256(model.read_bytes()).hexdigest()

    rebuilt = rebuild_drift_reference(model)

    assert {k: v for k, v in rebuilt.items() if k != "rebuilt"} == reference
    stored = json.loads(card_file.read_text())
    assert stored["drift_reference"] == rebuilt and {k: v for k, v in stored.items() if k != "drift_reference"} == {
        k: v for k, v in old.items() if k != "drift_reference"}
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


def test_rebuild_refuses_a_card_whose_history_cannot_be_regenerated(trained: tuple[Path, dict]) -> None:
    model, card = trained
    card_file = model.with_name(model.name + ".card.json")
    before = json.loads(card_file.read_text())
    other = json.loads(json.dumps(before))
    other["training_data"]["generator"]["seed"] += 1
    card_file.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not rebuilt"):
        rebuild_drift_reference(model)
    assert json.loads(card_file.read_text()) == other
    card_file.write_text(json.dumps(before))
