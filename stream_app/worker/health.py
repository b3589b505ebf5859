"""What the worker says about itself, and how it stops: readiness (/ready), the broker probe, gauges and
stats, the model hot-swap, and the stop after a write failed for good."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import structlog
from aiokafka import AIOKafkaClient
from faust.types import TP

from stream_app.domain.learning import OnlineLearner
from stream_app.domain.scoring import FraudScorer
from stream_app.kafka.compat import stop_waiting_for_acks, tables_recovered
from stream_app.kafka.security import KafkaSecurity
from stream_app.models.registry import ModelWatcher
from stream_app.settings import Settings
from stream_app.worker.metrics import Metrics
from stream_app.worker.outputs import failure_hint
from stream_app.worker.score_agent import ScoreAgent

log = structlog.get_logger("stream_app.worker")

FAILED_READY_GRACE_S = 1.0  # after a failed write: /ready answers 503 this long before the stop begins
BROKER_PROBE_S = 5.0
BROKER_STALE_S = 15.0  # /ready says the broker is unreachable when no probe succeeded this long


class TopicsMissing(RuntimeError):
    """The broker answers but lost the app's topics (an in-memory broker that restarted)."""


class BrokerProbe:
    """Whether the broker answered lately (readiness), and a loud crash when it lost the app's topics."""

    def __init__(self, settings: Settings, security: KafkaSecurity) -> None:
        self.settings = settings
        self.security = security
        self._ok_at = -1e9
        self._client: AIOKafkaClient | None = None

    def reachable(self) -> bool:
        return time.monotonic() - self._ok_at < BROKER_STALE_S

    async def run(self) -> None:
        """The broker check at start (so /ready can turn 200 with the worker), then every few seconds."""
        while True:
            await self.check()
            await asyncio.sleep(BROKER_PROBE_S)

    async def check(self) -> None:
        """Readiness needs to know the broker answers; a metadata round trip, bounded."""
        try:
            if self._client is None:
                client = AIOKafkaClient(bootstrap_servers=self.settings.bootstrap_servers,
                                        **self.security.client_kwargs())
                await asyncio.wait_for(client.bootstrap(), timeout=3.0)
                self._client = client
            cluster = await asyncio.wait_for(self._client.fetch_all_metadata(), timeout=3.0)
            self._ok_at = time.monotonic()
        except Exception as exc:  # any failure means "not reachable now"; logged, retried
            log.warning("broker.unreachable", error=repr(exc))
            return
        missing = sorted({self.settings.transactions_topic, self.settings.scores_topic} - set(cluster.topics()))
        if missing:
            # The broker answers but lost the app's topics: an in-memory broker that restarted (Tansu's
            # memory storage). Consumers would stall silently; crash loudly instead, so a supervisor
            # restarts the worker once the topics are back (stream-app worker --create-topics).
            log.error("broker.topics_missing", topics=missing,
                      hint="the broker lost its data (restarted with in-memory storage?): recreate the topics")
            raise TopicsMissing(f"topics {missing} are gone from the broker")


class Health:
    """Readiness, the broker probe, gauges, and the stop after a failed write."""

    def __init__(self, app: faust.App, settings: Settings, metrics: Metrics, scorer: FraudScorer,
                 learner: OnlineLearner, security: KafkaSecurity, scoring: ScoreAgent) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.scorer = scorer
        self.learner = learner
        self.security = security
        self.scoring = scoring
        self.failure: str | None = None  # a write failed for good, or the broker lost the topics: stopping
        # How fail() stops the worker: `stream-app worker` sets its faust Worker's stop (bounded, see cli).
        self.request_stop: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self.watcher = ModelWatcher(settings.model_watch_path) if settings.model_watch_path else None
        self.broker = BrokerProbe(settings, security)

    def fail(self, exc: BaseException, where: str) -> None:
        """A write failed for good: say why once, turn /ready to 503 and stop the worker (exit code 70)
        without acknowledging the batch, so its messages are read again after the restart. faust's
        shutdown would wait for the unacknowledged messages forever: it is told not to."""
        if self.failure is not None:
            return
        log.error("delivery.failed", agent=where, error=repr(exc), hint=failure_hint(exc),
                  effect="nothing of the batch is acknowledged; the worker stops and its input is read again")
        self._stop(exc, where)

    async def probe_broker(self) -> None:
        """The broker probe. A broker that lost the app's topics stops the worker as a failed write does: bounded,
        exit code 70, so a supervisor restarts it once the topics are back. (Left to crash the faust task, the
        stop once waited 60 s for faust's consumer thread.)"""
        try:
            await self.broker.run()
        except TopicsMissing as exc:  # logged by the probe (broker.topics_missing)
            if self.failure is None:
                self._stop(exc, "broker")

    def _stop(self, exc: BaseException, where: str) -> None:
        self.failure = f"{where}: {exc!r}"
        stop_waiting_for_acks(self.app)
        # /ready answers 503 for a moment before the stop takes the web server down, so a readiness probe
        # (or a load balancer in front of POST /score) sees the worker go out of service first.
        asyncio.get_running_loop().call_later(FAILED_READY_GRACE_S, self.request_stop)

    def writes(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A timer that writes to Kafka: a failed write stops the worker (see `fail`), as in the agents."""

        @functools.wraps(job)
        async def guarded() -> None:
            try:
                await job()
            except Exception as exc:
                self.fail(exc, job.__name__.strip("_"))

        return guarded

    def readiness(self) -> dict[str, bool]:
        return {
            "tables_recovered": tables_recovered(self.app),
            "not_rebalancing": not self.app.rebalancing,
            "broker_reachable": self.broker.reachable(),
            "models_loaded": self.scorer.onnx is not None and self.scorer.river is not None,
            "writes_ok": self.failure is None,
        }

    def models_info(self) -> dict[str, Any]:
        return models_info(self.scorer, self.learner)

    async def poll_model(self) -> None:
        assert self.watcher is not None
        await poll_model(self.watcher, self.scorer, self.metrics)

    async def refresh_gauges(self) -> None:
        """Gauges that are cheaper to read now and then than to keep up to date per event."""
        m = self.metrics
        consumer = self.app.consumer
        assigned = consumer.assignment()
        positions = self.scoring.positions
        for (topic, partition), offset in list(positions.items()):
            if TP(topic, partition) not in assigned:  # moved to another worker: asking would crash the app
                del positions[(topic, partition)]
                m.lag.remove(topic, str(partition))
                continue
            highwater = consumer.highwater(TP(topic, partition))
            if highwater is not None:
                m.lag.labels(topic, str(partition)).set(max(0, highwater - offset - 1))
        m.cards.set(len(self.scoring.cards))
        drift = self.scoring.drift
        if drift is not None:
            for feature, psi in drift.psi().items():
                m.drift_psi.labels(feature).set(psi)
        refresh_model_gauges(m, self.scorer, self.learner)

    async def log_stats(self) -> None:
        log.info("worker.stats", **self.metrics.snapshot(),
                 versions=self.scorer.versions(), quality=self.learner.metrics.snapshot())


def refresh_model_gauges(metrics: Metrics, scorer: FraudScorer, learner: OnlineLearner) -> None:
    """The versions serving and the online models' rolling quality, as gauges (the worker and the door)."""
    metrics.model_info.info(scorer.versions())
    for model, values in learner.metrics.snapshot().items():
        for metric, value in values.items():
            metrics.quality.labels(model, metric).set(value)


def models_info(scorer: FraudScorer, learner: OnlineLearner) -> dict[str, Any]:
    """``GET /models``: what serves (versions, cards, swaps, rules) and how the online models are doing."""
    card = {k: v for k, v in scorer.onnx.card.items() if k not in {"feature_stats", "params"}}
    info: dict[str, Any] = {
        "versions": scorer.versions(),
        "onnx": card,
        "onnx_swaps": [{"at_ms": e.at_ms, "path": str(e.path), "ok": e.result.ok, "version": e.result.version,
                        "error": e.result.error} for e in scorer.slot.history],
        "river": {"version": scorer.river.version, "labels_learned": scorer.river.n_learned,
                  "examples_offset": learner.offset, "learning": learner.learning},
        "combiner": "stacked" if scorer.stacker is not None else "weighted",
        "quality": learner.metrics.snapshot(),
        "rules": {"serving": None if scorer.rules.current is None else scorer.rules.current.summary(),
                  "changes": [c.as_dict() for c in scorer.rules.history]},
    }
    if scorer.challenger is not None:
        info["challenger"] = {k: v for k, v in scorer.challenger.current.card.items()
                              if k not in {"feature_stats", "params"}}
    return info


async def poll_model(watcher: ModelWatcher, scorer: FraudScorer, metrics: Metrics) -> None:
    """Hot swap: a new model file is validated off the event loop, then swapped in; a bad one is
    refused (logged once per content) and the serving model stays."""
    candidate = watcher.poll()
    if candidate is None:
        return
    result = await asyncio.to_thread(scorer.slot.try_swap, candidate)
    if result.ok:
        log.info("model.swapped", version=result.version, previous=result.previous, path=str(candidate))
    else:
        metrics.models_refused.inc()
        log.error("model.refused", error=result.error, serving=result.version, path=str(candidate))
