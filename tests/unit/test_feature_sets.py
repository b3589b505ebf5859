"""Upgrading to a wider feature set: what running workers hold from before keeps working, or is refused
clearly (captured vectors and examples of the old width, checkpoints without an entity replica)."""

from __future__ import annotations

from pathlib import Path

from stream_app.domain.entities import N_MODEL_FEATURES, EntityTable
from stream_app.domain.features import FEATURE_NAMES
from stream_app.domain.learning import Example, OnlineLearner, PrequentialMetrics
from stream_app.domain.scoring import FraudScorer
from stream_app.kafka.security import kafka_security
from stream_app.models import checkpoint
from stream_app.models.river_model import RiverScorer
from stream_app.settings import Settings
from stream_app.worker.entities import EntityReplica
from stream_app.worker.learner import Learner
from stream_app.worker.metrics import Metrics


def example(width: int, is_fraud: bool = True) -> Example:
    return Example("t1", [1.0] * width, is_fraud, {"onnx": 0.9, "river": 0.2}, "chargeback", 0)


def test_an_example_of_the_old_width_counts_for_quality_and_teaches_nothing() -> None:
    river = RiverScorer()
    learner = OnlineLearner(river, None, PrequentialMetrics(window=10))
    before = river.predict_proba_many([[1.0] * N_MODEL_FEATURES])
    learner.apply(example(len(FEATURE_NAMES)), 0)  # a card-only vector captured before the upgrade
    assert learner.other_feature_set == 1 and learner.offset == 0
    assert list(learner.metrics.labels) == [True]
    assert river.predict_proba_many([[1.0] * N_MODEL_FEATURES]) == before
    learner.apply(example(N_MODEL_FEATURES), 1)
    assert river.predict_proba_many([[1.0] * N_MODEL_FEATURES]) != before  # this one is learned


def test_a_checkpoint_from_before_the_entity_replica_restores_the_models(tmp_path: Path) -> None:
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "STREAM_APP_DATA_DIR": str(tmp_path)})
    scorer = FraudScorer.from_settings(settings)
    river = RiverScorer()
    river.learn_one([1.0] * N_MODEL_FEATURES, True)
    checkpoint.save(tmp_path / "checkpoints", river.version, 41, (river, None), None)  # the old 2-tuple state
    replica = EntityReplica(settings, Metrics(), kafka_security(settings))
    online = OnlineLearner(scorer.river, scorer.stacker, PrequentialMetrics())
    learner = Learner(settings, Metrics(), scorer, online, replica, kafka_security(settings))
    learner.restore_checkpoint()
    assert online.offset == 41 and scorer.river.predict_proba_many([[1.0] * N_MODEL_FEATURES]) == \
        river.predict_proba_many([[1.0] * N_MODEL_FEATURES])
    assert replica.table == EntityTable()  # no replica in it: rebuilt from the scores topic's start
