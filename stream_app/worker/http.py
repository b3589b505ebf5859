"""The HTTP door of the worker: translate requests to the scoring core and back, nothing else.

`POST /score` answers what the stream would answer for the given transactions if they arrived now:
the same parser, the same per-card state (read from this worker's table, never written), the same
`featurize_model` and `FraudScorer`. It does not change state, publish records or alert.

With a bearer token configured (`STREAM_APP_HTTP_TOKEN` or `_FILE`), every path except the probes
(`/health`, `/ready`) — and `/metrics` when `STREAM_APP_METRICS_PUBLIC=true` — answers 401 without
`Authorization: Bearer <token>`. The check is an aiohttp middleware, so it also covers paths that are
not ours (404s) and Faust's own pages: protected unless listed as public.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import faust
import orjson
from aiohttp import web as aiohttp_web
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_app.domain.entities import EntityTable, featurize_model
from stream_app.domain.events import NO_PAN_KEY, InvalidEvent, load_json_object, transaction_from_dict
from stream_app.domain.features import CardState, load_once
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.records import prediction_record
from stream_app.domain.scoring import FraudScorer, Scored
from stream_app.settings import Settings
from stream_app.worker.delivery import decode_card
from stream_app.worker.metrics import Metrics

MAX_BATCH = 1000
PROBES = frozenset({"/health", "/ready"})  # kubelet probes carry no token


@dataclass(frozen=True)
class Door:
    """What the pages need: the core, the card states (read only), readiness and model info. The worker serves
    them from its own tables; ``stream-app door`` (:mod:`stream_app.door`) from replicas of its logs."""

    settings: Settings
    metrics: Metrics
    scorer: FraudScorer
    pans: PanTokenizer
    horizon_ms: int
    cards: MutableMapping[bytes, bytes]
    entities: EntityTable  # the worker's replica, read only (every merchant is in every worker's replica)
    readiness: Callable[[], dict[str, bool]]
    models_info: Callable[[], dict[str, Any]]

    def load_state(self, card_id: str) -> CardState | None:
        """A card's stored state (the worker's table, or the door process's replica of its changelog)."""
        stored = self.cards.get(card_id.encode())
        return None if stored is None else decode_card(stored)[0]


class RequestError(ValueError):
    """A 4xx answer: ``status``, a stable ``error`` code and details for the caller."""

    def __init__(self, status: int, error: str, detail: str, items: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.items = status, error, detail, items or []

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "detail": self.detail}
        if self.items:
            body["items"] = self.items
        return body


class BearerAuth:
    """``Authorization: Bearer <token>`` on every path not in ``public``; no token configured: open.

    The token is compared with :func:`hmac.compare_digest` (no timing hint) and never logged or echoed.
    """

    __slots__ = ("_token", "public")

    def __init__(self, token: str | None, public: frozenset[str] = PROBES) -> None:
        self._token = token.encode() if token else None
        self.public = public

    def __repr__(self) -> str:
        return f"BearerAuth(enabled={self.enabled}, public={sorted(self.public)})"

    @classmethod
    def from_settings(cls, settings: Settings) -> BearerAuth:
        from stream_app.kafka.security import read_secret_file

        token = settings.http_token
        if settings.http_token_file:
            token = read_secret_file(settings.http_token_file, "STREAM_APP_HTTP_TOKEN_FILE")
        return cls(token, PROBES | {"/metrics"} if settings.metrics_public else PROBES)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, path: str, authorization: str | None) -> RequestError | None:
        """None when the request may pass, else the 401 to answer."""
        if self._token is None or path in self.public:
            return None
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return RequestError(401, "unauthorized", "send Authorization: Bearer <token>")
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            return RequestError(401, "invalid_token", "the bearer token is not valid")
        return None

    def middleware(self) -> Callable[..., Awaitable[aiohttp_web.StreamResponse]]:
        @aiohttp_web.middleware
        async def bearer_auth(request: aiohttp_web.Request,
                              handler: Callable[[aiohttp_web.Request], Awaitable[aiohttp_web.StreamResponse]]
                              ) -> aiohttp_web.StreamResponse:
            denied = self.check(request.path, request.headers.get("Authorization"))
            if denied is not None:
                challenge = 'Bearer realm="stream_app"' + (
                    ', error="invalid_token"' if denied.error == "invalid_token" else "")
                return aiohttp_web.Response(body=orjson.dumps(denied.body()), status=denied.status,
                                            content_type="application/json",
                                            headers={"WWW-Authenticate": challenge})
            return await handler(request)

        return bearer_auth


def parse_score_request(raw: bytes, max_bytes: int, pans: PanTokenizer = NO_PAN_KEY) -> tuple[list[Any], bool]:
    """One transaction object or a list of them; every item is validated before anything is scored."""
    if not raw:
        raise RequestError(400, "empty_body", "send one transaction object or a list of them")
    try:
        body = orjson.loads(raw) if raw.lstrip()[:1] == b"[" else load_json_object(raw, max_bytes * MAX_BATCH)
    except (orjson.JSONDecodeError, InvalidEvent) as exc:
        raise RequestError(400, "invalid_json", str(exc)) from None
    single = isinstance(body, dict)
    items = [body] if single else body
    if not items or len(items) > MAX_BATCH:
        raise RequestError(400, "batch_size", f"send 1 to {MAX_BATCH} transactions")
    txs, errors = [], []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise InvalidEvent("a transaction must be a JSON object")
            txs.append(transaction_from_dict(item, pans))
        except InvalidEvent as exc:
            errors.append({"index": i, "reason": exc.reason, "detail": exc.detail, "field": exc.field})
    if errors:
        raise RequestError(422, "invalid_transaction", f"{len(errors)} of {len(items)} transactions are invalid",
                           errors)
    return txs, single


def preview(door: Door, txs: list[Any]) -> list[dict[str, Any]]:
    """Score on private copies of the cards' states: a list behaves as the stream would for that
    sequence, and the table is left as it was."""
    states: dict[str, CardState] = {}
    entities = door.entities.scratch(txs)
    answers: list[dict[str, Any] | None] = []
    to_score: list[tuple[int, Any, list[float]]] = []
    for i, tx in enumerate(txs):
        load_once(states, tx.card_id, door.load_state)
        try:
            row = featurize_model(states, entities, tx, door.horizon_ms)
        except InvalidEvent as exc:  # duplicate or late: the stream would not score it either
            answers.append({"tx_id": tx.tx_id, "status": exc.reason, "detail": exc.detail})
            continue
        answers.append(None)
        to_score.append((i, tx, row))
    scored: list[Scored] = door.scorer.score_many([t for _, t, _ in to_score], [r for _, _, r in to_score])
    for (i, _, _), item in zip(to_score, scored, strict=True):
        answers[i] = {"status": "scored", **prediction_record(item, door.scorer.reasons)}
    return [a for a in answers if a is not None]


def score(door: Door, raw: bytes) -> tuple[int, dict[str, Any]]:
    """``POST /score``: (status, body) for a request body, whichever web server serves it; counted and timed in
    the process's metrics."""
    started = time.perf_counter()
    status, body = _score(door, raw, started)
    door.metrics.score_requests.labels(str(status)).inc()
    door.metrics.score_seconds.observe(time.perf_counter() - started)
    return status, body


def _score(door: Door, raw: bytes, started: float) -> tuple[int, dict[str, Any]]:
    try:
        txs, single = parse_score_request(raw, door.settings.max_message_bytes, door.pans)
    except RequestError as exc:
        return exc.status, exc.body()
    results = preview(door, txs)
    took_ms = round(1000 * (time.perf_counter() - started), 3)
    return 200, {**results[0], "took_ms": took_ms} if single else {"results": results, "took_ms": took_ms}


def ready(door: Door) -> tuple[int, dict[str, Any]]:
    """``GET /ready``: 200 when every check holds, else 503 with the checks."""
    checks = door.readiness()
    return 200 if all(checks.values()) else 503, {"ready": all(checks.values()), "checks": checks}


def metrics_text(door: Door) -> bytes:
    """``GET /metrics``: the Prometheus exposition of this process's registry."""
    return generate_latest(door.metrics.registry)


#: ``GET /metrics``' content type, without the charset (aiohttp wants that apart).
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0]


def register(door: Door, app: faust.App) -> None:
    """Add the service's pages to the Faust app's web server, behind the bearer token if one is set."""
    auth = BearerAuth.from_settings(door.settings)
    if auth.enabled:
        # Faust serves through aiohttp; middlewares can be added until the server starts.
        app.web.web_app.middlewares.append(auth.middleware())  # type: ignore[attr-defined]
    door.metrics.ready.set_function(lambda: float(all(door.readiness().values())))  # read at each scrape

    def json(view: View, body: Mapping[str, Any] | list[Any], status: int = 200) -> Response:
        return view.bytes(orjson.dumps(body), content_type="application/json", status=status)

    @app.page("/score")
    class Score(View):
        async def post(self, request: Request) -> Response:
            status, body = score(door, await request.read())
            return json(self, body, status)

        async def get(self, request: Request) -> Response:
            return json(self, METHOD_NOT_ALLOWED, 405)

    @app.page("/health")
    async def health(view: View, request: Request) -> Response:
        """Alive: the event loop answers."""
        return json(view, ALIVE)

    @app.page("/ready")
    async def ready_page(view: View, request: Request) -> Response:
        """Ready: tables recovered, not rebalancing, the broker answered recently, models loaded."""
        status, body = ready(door)
        return json(view, body, status)

    @app.page("/models")
    async def models(view: View, request: Request) -> Response:
        return json(view, door.models_info())

    @app.page("/metrics")
    async def metrics(view: View, request: Request) -> Response:
        """Prometheus exposition of this worker's registry."""
        return view.bytes(metrics_text(door), content_type=METRICS_CONTENT_TYPE)

    @app.page("/openapi.json")
    async def openapi(view: View, request: Request) -> Response:
        return json(view, openapi_document(auth))


ALIVE: Final = {"status": "ok"}
METHOD_NOT_ALLOWED: Final = {"error": "method_not_allowed", "detail": "POST transactions to /score"}


def openapi_document(auth: BearerAuth | None = None) -> dict[str, Any]:
    """The OpenAPI description; with ``auth`` enabled, every operation but the public ones requires the
    bearer scheme and documents its 401."""
    from stream_app.domain.schemas import load_schema

    error = {"type": "object", "required": ["error", "detail"],
             "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                            "items": {"type": "array", "items": {"type": "object"}}}}
    transaction = load_schema("transaction")
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "stream_app worker", "version": "1",
                 "description": "Real-time fraud scoring. POST /score answers what the stream would, without "
                                "changing state or publishing."},
        "paths": {
            "/score": {"post": {
                "summary": "Score one transaction or a list (1-1000), read-only",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [transaction, {"type": "array", "items": transaction, "minItems": 1,
                                            "maxItems": MAX_BATCH}]}}}},
                "responses": {
                    "200": {"description": "One result (object) or {results: [...]}: status scored, duplicate or "
                                           "late_event; decision, risk_score, scores, model_versions, features, "
                                           "reasons"},
                    "400": {"description": "Not JSON, empty, or wrong batch size",
                            "content": {"application/json": {"schema": error}}},
                    "422": {"description": "Invalid transactions, with per-item reasons",
                            "content": {"application/json": {"schema": error}}}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/ready": {"get": {"summary": "Readiness: tables recovered, broker reachable, models loaded",
                               "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/models": {"get": {"summary": "Model versions and cards",
                                "responses": {"200": {"description": "versions, cards, swap history"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics of this worker",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {"securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "Required when the worker has STREAM_APP_HTTP_TOKEN (or _FILE) set; never on /health "
                           "and /ready; not on /metrics with STREAM_APP_METRICS_PUBLIC=true."}}},
    }
    if auth is not None and auth.enabled:
        doc["security"] = [{"bearerAuth": []}]
        unauthorized = {"description": "Missing or invalid bearer token",
                        "content": {"application/json": {"schema": error}}}
        for path, operations in doc["paths"].items():
            for operation in operations.values():
                if path in auth.public:
                    operation["security"] = []
                else:
                    operation["responses"]["401"] = unauthorized
    return doc
