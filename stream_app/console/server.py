"""`stream-app console`: the alert review page, one process apart from the workers.

Why a process of its own: workers each own some partitions and none reads ``fraud-alerts``; a page served by
them would need every worker to follow every alert and to agree on claims across processes behind a load
balancer. One console follows all of ``fraud-alerts``, ``scores`` (the cards' recent transactions) and
``labels`` (verdicts given anywhere close alerts) from the start, holds the claims, pushes updates to the pages
(Server-Sent Events) and publishes verdicts to ``labels`` keyed by card, where the workers' label join teaches
them to the online model and the entity risk. Claims live in this process: run one console (a second one
would hold its own claims; its verdicts still close alerts in both).

Security: the page shell and its script are static and public (no event data in them); every data path
(``/api/...``) sits behind the workers' bearer-token middleware, the token sent by the page in the
``Authorization`` header (a header, not a cookie: no cross-site request can carry it). Verdicts need a JSON body,
so a cross-site form cannot post one. Every page carries a Content-Security-Policy without inline script.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stream_app.domain.events import InvalidEvent, parse_label
from stream_app.domain.review import ReviewError, ReviewQueue, check_analyst
from stream_app.kafka.security import client_kwargs, kafka_security
from stream_app.kafka.topic_reader import log_follower
from stream_app.settings import Settings
from stream_app.worker.http import PROBES, BearerAuth

log = structlog.get_logger("stream_app.console")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"/review": ("index.html", "text/html"), "/review/app.js": ("app.js", "text/javascript"),
          "/review/app.css": ("app.css", "text/css")}
PUBLIC = PROBES | frozenset(STATIC) | {"/"}
KEEPALIVE_S = 15.0
MAX_PENDING_FRAMES = 10_000  # updates queued for one page before it is dropped (it reconnects)


def now_ms() -> int:
    return int(time.time() * 1000)


class Console:
    """The queue, the pages subscribed to it, and the Kafka clients that feed it and publish verdicts."""

    def __init__(self, settings: Settings, claim_s: float) -> None:
        self.settings = settings
        self.queue = ReviewQueue(claim_ms=int(claim_s * 1000))
        self.subscribers: set[asyncio.Queue[bytes]] = set()
        self.producer: AIOKafkaProducer | None = None
        self.caught_up = False
        self.failed: str | None = None  # why following the topics stopped (then /ready answers 503)

    def push(self, kind: str, **body: Any) -> None:
        """To every page; a page that does not read its updates is dropped (its stream ends, it reconnects
        and starts again from a snapshot)."""
        frame = b"data: " + orjson.dumps({"type": kind, **body}) + b"\n\n"
        for subscriber in list(self.subscribers):
            try:
                subscriber.put_nowait(frame)
            except asyncio.QueueFull:
                self.subscribers.discard(subscriber)

    def on_record(self, topic: str, value: bytes | None) -> None:
        s = self.settings
        if topic == s.scores_topic:
            self.queue.add_score(value)
        elif topic == s.alerts_topic:
            view = self.queue.add_alert(value)
            if view is not None:
                self.push("alert", view=view)
        elif topic == s.labels_topic:
            try:
                label = parse_label(value or b"", s.max_message_bytes)
            except InvalidEvent:
                return  # the workers dead-letter it; nothing to close here
            if self.queue.add_label(label) is not None:
                self.push("closed", alert_id=label.tx_id, label="fraud" if label.is_fraud else "legit",
                          source=label.source, analyst=label.analyst)

    async def follow(self) -> None:
        """Every partition of the three topics from the start (no consumer group: nothing committed)."""
        s = self.settings
        topics = (s.scores_topic, s.alerts_topic, s.labels_topic)  # scores first: alerts find their card's history
        consumer = log_follower(s, kafka_security(s))
        await consumer.start()
        try:
            await consumer.topics()
            missing = [t for t in topics if not consumer.partitions_for_topic(t)]
            if missing:
                raise LookupError(f"topics missing: {', '.join(missing)} (create them: stream-app topics)")
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(tps)
            next_offset = dict.fromkeys(tps, 0)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for tp in sorted(batches, key=lambda tp: topics.index(tp.topic)):
                    for message in batches[tp]:
                        try:
                            self.on_record(tp.topic, message.value)
                        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # bad records are data
                            log.warning("console.record_unreadable", topic=tp.topic, partition=tp.partition,
                                        offset=message.offset, error=repr(exc))
                    next_offset[tp] = batches[tp][-1].offset + 1
                # caught up: every partition read to the high watermark of its last fetch (never ListOffsets,
                # wrong on Tansu), or nothing more came
                if not self.caught_up and (not batches or all(
                        (high := consumer.highwater(tp)) is not None and next_offset[tp] >= high for tp in tps)):
                    self.caught_up = True
                    log.info("console.caught_up", open_alerts=len(self.queue.alerts))
        finally:
            await consumer.stop()

    def stopped_following(self, task: asyncio.Task[None]) -> None:
        """The queue no longer follows the topics (the broker went away, a topic is missing): say so, and
        answer /ready 503, so that a supervisor restarts the console."""
        if not task.cancelled() and task.exception() is not None:
            self.failed = repr(task.exception())
            log.error("console.follow_failed", error=self.failed)

    async def expire_claims(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for alert_id in self.queue.expire(now_ms()):
                log.info("console.claim_expired", alert_id=alert_id)
                self.push("released", alert_id=alert_id)

    async def publish(self, alert_id: str, analyst: str, is_fraud: bool) -> dict[str, Any]:
        """The verdict as a label on ``labels``, keyed by its card (the partition the workers' join reads)."""
        label = self.queue.verdict(alert_id, analyst, is_fraud, now_ms())
        assert self.producer is not None
        try:
            await self.producer.send_and_wait(self.settings.labels_topic, label.to_bytes(),
                                              key=label.card_id.encode())
        except KafkaError as exc:
            log.error("console.verdict_failed", alert_id=alert_id, error=repr(exc))
            raise ReviewError(503, "publish_failed", "the label was not confirmed by the broker: try again") from None
        log.info("console.verdict", alert_id=alert_id, card_id=label.card_id, analyst=analyst,
                 label="fraud" if is_fraud else "legit")
        if self.queue.add_label(label) is not None:  # also read back from the topic: closing twice is a no-op
            self.push("closed", alert_id=alert_id, label="fraud" if is_fraud else "legit", source="analyst",
                      analyst=analyst)
        return {"alert_id": alert_id, "label": "fraud" if is_fraud else "legit", "analyst": analyst}


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ReviewError(415, "json_only", "send Content-Type: application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ReviewError(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ReviewError(400, "invalid_json", "send a JSON object")
    return body


def create_app(settings: Settings, claim_s: float = 300.0) -> web.Application:
    """The console's aiohttp application: static page, event stream, claim / release / verdict."""
    console = Console(settings, claim_s)
    auth = BearerAuth.from_settings(settings)
    auth.public = PUBLIC

    @web.middleware
    async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    app = web.Application(middlewares=[security_headers, auth.middleware()])
    app["console"] = console

    async def static(request: web.Request) -> web.Response:
        name, content_type = STATIC[request.path]
        body = resources.files("stream_app.console").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=content_type, charset="utf-8")

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/review")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        ok = console.caught_up and console.failed is None
        return web.json_response({"ready": ok, "caught_up": console.caught_up, "failed": console.failed},
                                 status=200 if ok else 503)

    async def events(request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the open queue first, then every change."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        subscriber: asyncio.Queue[bytes] = asyncio.Queue(maxsize=MAX_PENDING_FRAMES)
        console.subscribers.add(subscriber)  # before the snapshot: no update falls between the two
        try:
            await response.write(b"data: " + orjson.dumps({"type": "snapshot", "views": console.queue.snapshot(),
                                                           "claim_s": claim_s}) + b"\n\n")
            while subscriber in console.subscribers:
                try:
                    frame = await asyncio.wait_for(subscriber.get(), KEEPALIVE_S)
                except TimeoutError:
                    frame = b": keepalive\n\n"
                await response.write(frame)
        except ConnectionResetError:
            pass  # the page went away
        finally:
            console.subscribers.discard(subscriber)
        return response

    async def act(request: web.Request) -> web.Response:
        alert_id, action = request.match_info["alert_id"], request.match_info["action"]
        try:
            body = await _json_body(request)
            analyst = check_analyst(body.get("analyst"))
            if action == "claim":
                claim = console.queue.claim(alert_id, analyst, now_ms())
                console.push("claimed", alert_id=alert_id, analyst=analyst, expires_ms=claim.expires_ms)
                return web.json_response({"alert_id": alert_id, "analyst": analyst, "expires_ms": claim.expires_ms})
            if action == "release":
                console.queue.release(alert_id, analyst)
                console.push("released", alert_id=alert_id)
                return web.json_response({"alert_id": alert_id})
            verdict = body.get("verdict")
            if verdict not in ("fraud", "legit"):
                raise ReviewError(400, "invalid_verdict", "verdict: fraud or legit")
            return web.json_response(await console.publish(alert_id, analyst, verdict == "fraud"))
        except ReviewError as exc:
            return web.json_response({"error": exc.error, "detail": exc.detail}, status=exc.status)

    app.router.add_get("/", root)
    for path in STATIC:
        app.router.add_get(path, static)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/api/events", events)
    app.router.add_post(r"/api/alerts/{alert_id}/{action:claim|release|verdict}", act)
    app.cleanup_ctx.append(_clients)
    return app


async def _clients(app: web.Application) -> AsyncIterator[None]:
    """The producer and the background tasks live as long as the application."""
    console: Console = app["console"]
    s = console.settings
    console.producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all", **client_kwargs(s))
    await console.producer.start()
    tasks = [asyncio.create_task(console.follow()), asyncio.create_task(console.expire_claims())]
    tasks[0].add_done_callback(console.stopped_following)
    log.info("console.started", alerts_topic=s.alerts_topic, labels_topic=s.labels_topic)
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await console.producer.stop()


def run(settings: Settings, host: str, port: int, claim_s: float) -> int:
    web.run_app(create_app(settings, claim_s), host=host, port=port, print=None, handle_signals=True)
    return 0
