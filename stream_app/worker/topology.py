"""The composition root: the faust app, its topics and tables, and who runs on them.

``StreamApp`` builds the scoring core (scorer, learner, ingress), the faust app, and the worker's parts,
each one job (:mod:`.score_agent`, :mod:`.label_agent`, :mod:`.learner`, :mod:`.health`, :mod:`.http`),
then registers them as faust agents, timers and tasks. Nothing here runs per event.
"""

from __future__ import annotations

from typing import Any

import faust
import structlog
from prometheus_client import CollectorRegistry

from stream_app.domain.ingress import Ingress
from stream_app.kafka.compat import set_fetch_max_wait
from stream_app.kafka.transport import broker_url
from stream_app.settings import Settings
from stream_app.worker import http
from stream_app.worker.delivery import CARDS_TABLE
from stream_app.worker.health import Health
from stream_app.worker.label_agent import LabelAgent
from stream_app.worker.outputs import Outputs
from stream_app.worker.score_agent import ScoreAgent
from stream_app.worker.serving import Serving

log = structlog.get_logger("stream_app.worker")


class StreamApp:
    """The faust app and the worker's parts around the pure scoring core."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = s = settings
        serving = Serving(settings, registry)
        self.metrics, self.scorer, self.learner = serving.metrics, serving.scorer, serving.learner
        self.pans = serving.pans
        self.horizon_ms, self.kafka_security = serving.horizon_ms, serving.kafka_security
        self.entities, self.learning, self.rules = serving.entities, serving.learning, serving.rules
        if not self.pans.keyed:
            log.warning("pan.no_key", effect="card ids that look like card numbers are dead-lettered as raw_pan")
        self.ingress = Ingress(s.max_message_bytes, self.horizon_ms, self.pans, s.transactions_topic, s.partitions,
                               self.entities.table)
        self.app = self._faust_app()
        self.tables = self._tables()
        self.outputs = Outputs(self.app, settings, self.metrics, self.pans, self.scorer, self.entities.table)
        self.scoring = ScoreAgent(settings, self.metrics, self.scorer, self.ingress, self.outputs, self.tables,
                                  self.kafka_security, self.entities, self._fail, self.rules.wait_caught_up)
        self.labels = LabelAgent(settings, self.metrics, self.outputs, self.tables, self._fail)
        self.health = Health(self.app, settings, self.metrics, self.scorer, self.learner, self.kafka_security,
                             self.scoring)
        self._register()

    @property
    def failure(self) -> str | None:
        """Why the worker is stopping after a failed write (None while writes succeed)."""
        return self.health.failure

    def _fail(self, exc: BaseException, where: str) -> None:
        self.health.fail(exc, where)

    def _faust_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=broker_url(s.bootstrap_servers, fetch_verified_offsets=s.fetch_verified_offsets),
            broker_credentials=self.kafka_security.faust_credentials(),
            store="memory://",
            datadir=s.data_dir,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=True,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(0.5, s.session_timeout_s / 6),
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            web_tables_enabled=False,  # /table/... would expose per-card state
            web_router_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
            producer_acks=-1,
            producer_max_batch_size=s.producer_batch_bytes,
            producer_request_timeout=s.delivery_timeout_s,
            key_serializer="raw",
            value_serializer="raw",
            consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=s.stream_buffer_maxsize,
        )
        set_fetch_max_wait(app, s.fetch_max_wait_ms)  # faust hard-codes 1500 ms (see kafka/compat.py)
        return app

    def _tables(self) -> dict[str, Any]:
        """The changelog-backed tables, raw bytes. use_partitioner: a changelog partition is its key's
        partition (murmur2 of card_id), i.e. the partition the event came from, also when a batch mixes
        partitions. Captured vectors and parked labels are keyed (card, tx_id) and partitioned by card."""
        s, app = self.settings, self.app
        raw: dict[str, Any] = {"partitions": s.partitions, "use_partitioner": True, "key_type": bytes,
                               "value_type": bytes}
        return {
            "cards": app.Table(CARDS_TABLE, help="per-card feature state and delivery ledger (worker/delivery.py)",
                               **raw),
            "captured": app.Table("captured-features", help="feature vectors used at scoring time, until their label",
                                  **raw),
            "parked": app.Table("parked-labels", help="labels that arrived before their transaction was scored",
                                **raw),
        }

    def _register(self) -> None:
        s, app, health = self.settings, self.app, self.health
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                               "value_serializer": "raw"}
        app.agent(app.topic(s.transactions_topic, s.rekeyed_topic, **raw), name="score")(self.scoring.agent)
        app.agent(app.topic(s.labels_topic, s.labels_rekeyed_topic, **raw), name="label-join")(self.labels.agent)
        app.timer(max(0.5, min(60.0, s.label_wait_s / 2)))(health.writes(self.labels.expire_parked_labels))
        app.timer(3600.0)(health.writes(self.labels.expire_captured))
        app.task(self.learning.run)
        app.task(self.entities.run)
        app.task(self.rules.run)
        app.timer(600.0)(self.entities.expire)
        app.timer(s.checkpoint_interval_s)(self.learning.save_checkpoint)
        if health.watcher is not None:
            app.timer(s.model_poll_s)(health.poll_model)
        app.timer(30.0)(health.log_stats)
        app.timer(5.0)(health.refresh_gauges)
        app.task(health.probe_broker)
        http.register(http.Door(settings=s, metrics=self.metrics, scorer=self.scorer, pans=self.pans,
                                horizon_ms=self.horizon_ms, cards=self.tables["cards"], entities=self.entities.table,
                                readiness=health.readiness, models_info=health.models_info), app)

        @app.on_before_shutdown.connect
        async def _final_checkpoint(*_: Any, **__: Any) -> None:
            await self.learning.save_checkpoint()


def create_app(settings: Settings | None = None) -> StreamApp:
    return StreamApp(settings or Settings.from_env())
