"""The door process: the scoring core and its replicas behind the worker's pages, on an aiohttp server.

Its answers lag the stream by the time a worker's writes take to come back from the broker (its changelog, its
score records, the examples log: tens of milliseconds while the workers keep up). ``/ready`` answers 200 once
every log has been read to its end once and the broker answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import structlog
from aiohttp import web

from stream_app.door.cards import CardReplica
from stream_app.models.registry import ModelWatcher
from stream_app.settings import Settings
from stream_app.worker import collector, http
from stream_app.worker.health import BrokerProbe, models_info, poll_model, refresh_model_gauges
from stream_app.worker.serving import Serving

log = structlog.get_logger("stream_app.door")
ENTITY_EXPIRY_S = 600.0  # as the worker's timer
GAUGES_S = 5.0  # as the worker's timer
FOLLOWER_SLICE = 16  # records applied between two turns of the event loop (the worker: STREAM_APP_BATCH_SLICE)


class DoorProcess:
    """The scorer, the four followers that keep it current, and the broker probe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        # A worker's checkpoint, when DATA_DIR is shared: only read, never written here. The followers give the loop
        # back every FOLLOWER_SLICE records: requests wait behind a slice of learning or folding, never a fetch.
        serving = Serving(dataclasses.replace(s, batch_slice=min(s.batch_slice, FOLLOWER_SLICE)), role="door")
        self.metrics, self.scorer, self.learner = serving.metrics, serving.scorer, serving.learner
        self.entities, self.learning, self.rules = serving.entities, serving.learning, serving.rules
        self.cards = CardReplica(s, self.metrics, serving.kafka_security)
        self.broker = BrokerProbe(s, serving.kafka_security)
        self.watcher = ModelWatcher(s.model_watch_path) if s.model_watch_path else None
        self.door = http.Door(settings=s, metrics=self.metrics, scorer=self.scorer, pans=serving.pans,
                              horizon_ms=serving.horizon_ms, cards=self.cards.states, entities=self.entities.table,
                              readiness=self.readiness, models_info=lambda: models_info(self.scorer, self.learner))
        self.failure: str | None = None

    def readiness(self) -> dict[str, bool]:
        return {
            "cards_caught_up": self.cards.caught_up.is_set(),
            "entities_caught_up": self.entities.caught_up.is_set(),
            "examples_caught_up": self.learning.caught_up.is_set(),
            "rules_caught_up": self.rules.caught_up.is_set(),
            "broker_reachable": self.broker.reachable(),
            "models_loaded": self.scorer.onnx is not None and self.scorer.river is not None,
        }

    def jobs(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """What runs beside the web server, each until the process stops."""
        jobs = [self.cards.run, self.entities.run, self.learning.run, self.rules.run, self.broker.run,
                self._announce_ready, every(ENTITY_EXPIRY_S, _sync(self.entities.expire)),
                every(GAUGES_S, _sync(lambda: refresh_model_gauges(self.metrics, self.scorer, self.learner)))]
        if self.watcher is not None:
            watcher = self.watcher
            jobs.append(every(self.settings.model_poll_s, lambda: poll_model(watcher, self.scorer, self.metrics)))
        return jobs

    async def _announce_ready(self) -> None:
        while not all(self.readiness().values()):
            await asyncio.sleep(0.1)
        frozen = collector.freeze_startup()  # what start-up built lives as long as the process
        log.info("door.ready", onnx_version=self.scorer.onnx.version, cards=len(self.cards.states),
                 examples_offset=self.learner.offset, gc_frozen_objects=frozen)

    def failed(self, task: asyncio.Task[None]) -> None:
        """A follower stopped with an error: the door's answers would go stale, so the process stops (exit 1)."""
        if task.cancelled() or task.exception() is None or self.failure is not None:
            return
        self.failure = repr(task.exception())
        log.error("door.failed", error=self.failure, effect="the door stops; restart it")
        os.kill(os.getpid(), signal.SIGTERM)


def every(seconds: float, job: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], Coroutine[Any, Any, None]]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            await job()
    return loop


def _sync(job: Callable[[], None]) -> Callable[[], Coroutine[Any, Any, None]]:
    async def run() -> None:
        job()
    return run


def create_app(process: DoorProcess) -> web.Application:
    door = process.door
    auth = http.BearerAuth.from_settings(door.settings)
    app = web.Application(middlewares=[auth.middleware()] if auth.enabled else [])
    door.metrics.ready.set_function(lambda: float(all(door.readiness().values())))

    def json(body: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    async def score(request: web.Request) -> web.Response:
        status, body = http.score(door, await request.read())
        return json(body, status)

    async def score_get(request: web.Request) -> web.Response:
        return json(http.METHOD_NOT_ALLOWED, 405)

    async def health(request: web.Request) -> web.Response:
        return json(http.ALIVE)

    async def ready(request: web.Request) -> web.Response:
        status, body = http.ready(door)
        return json(body, status)

    async def models(request: web.Request) -> web.Response:
        return json(door.models_info())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=http.metrics_text(door), content_type=http.METRICS_CONTENT_TYPE)

    async def openapi(request: web.Request) -> web.Response:
        return json(http.openapi_document(auth))

    app.router.add_post("/score", score)
    app.router.add_get("/score", score_get)
    for path, handler in (("/health", health), ("/ready", ready), ("/models", models), ("/metrics", metrics),
                          ("/openapi.json", openapi)):
        app.router.add_get(path, handler)

    async def followers(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(job()) for job in process.jobs()]
        for task in tasks:
            task.add_done_callback(process.failed)
        log.info("door.started", cards_topic=process.cards.topic)
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    app.cleanup_ctx.append(followers)
    return app


def run(settings: Settings, host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT; 1 when a follower failed."""
    collector.set_thresholds(settings.gc_threshold_values())
    process = DoorProcess(settings)
    collector.PauseTimer(process.metrics.gc_pause).install()
    web.run_app(create_app(process), host=host, port=port, print=None, handle_signals=True, access_log=None,
                shutdown_timeout=min(5.0, settings.shutdown_timeout_s))
    return 1 if process.failure else 0
