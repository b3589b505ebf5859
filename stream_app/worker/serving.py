"""What every process that scores needs, the worker and the door alike: the scoring core and the followers that
keep it current (the examples log teaches the online models, the ``scores`` topic feeds the entity table, the
``rules`` topic sets the rules), restored from the latest checkpoint."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from stream_app.domain.learning import OnlineLearner, PrequentialMetrics
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.scoring import FraudScorer
from stream_app.kafka.security import kafka_security
from stream_app.settings import Settings
from stream_app.worker.entities import EntityReplica
from stream_app.worker.learner import Learner
from stream_app.worker.metrics import Metrics
from stream_app.worker.rules import RulesFollower


class Serving:
    """The scorer, its online learner, and the followers of the logs every scoring process reads whole."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None, role: str = "worker") -> None:
        s = self.settings = settings
        self.metrics = Metrics(registry, role)
        self.scorer = FraudScorer.from_settings(s)
        self.learner = OnlineLearner(self.scorer.river, self.scorer.stacker,
                                     PrequentialMetrics(s.quality_window, s.review_threshold),
                                     learning=s.river_learning)
        self.pans = PanTokenizer.from_settings(s)
        self.horizon_ms = s.dedup_horizon_s * 1000
        self.kafka_security = kafka_security(s)  # files read once; every Kafka client uses it
        self.entities = EntityReplica(s, self.metrics, self.kafka_security, self.pans.key or b"")
        self.learning = Learner(s, self.metrics, self.scorer, self.learner, self.entities, self.kafka_security)
        self.learning.restore_checkpoint()  # before anyone takes the replica's table
        self.rules = RulesFollower(s, self.metrics, self.scorer, self.kafka_security)
