"""Optional bearer token on the worker's HTTP pages: probes stay open, everything else needs the token."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.settings import Settings
from stream_app.worker.http import PROBES, BearerAuth, openapi_document, register

TOKEN = "tok-5d1e0b-secret"


def test_no_token_means_open() -> None:
    auth = BearerAuth(None)
    assert not auth.enabled and auth.check("/score", None) is None


@pytest.mark.parametrize(("header", "error"), [
    (None, "unauthorized"), ("", "unauthorized"), (f"Basic {TOKEN}", "unauthorized"), ("Bearer ", "unauthorized"),
    ("Bearer nope", "invalid_token"), (f"Bearer {TOKEN}x", "invalid_token"), (f"Bearer {TOKEN[:-1]}", "invalid_token"),
])
def test_missing_or_wrong_token_is_401(header: str | None, error: str) -> None:
    denied = BearerAuth(TOKEN).check("/score", header)
    assert denied is not None and (denied.status, denied.error) == (401, error)
    assert TOKEN not in orjson.dumps(denied.body()).decode()


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  Bearer   {TOKEN} "])
def test_right_token_passes(header: str) -> None:
    assert BearerAuth(TOKEN).check("/models", header) is None


def test_probes_are_public_and_metrics_only_when_asked(tmp_path: Path) -> None:
    closed = BearerAuth.from_settings(Settings(http_token=TOKEN))
    assert all(closed.check(path, None) is None for path in PROBES)
    assert closed.check("/metrics", None) is not None
    (tmp_path / "token").write_text(TOKEN + "\n")
    open_metrics = BearerAuth.from_settings(Settings(http_token_file=str(tmp_path / "token"), metrics_public=True))
    assert open_metrics.check("/metrics", None) is None and open_metrics.check("/metrics", f"Bearer {TOKEN}") is None
    assert open_metrics.check("/score", f"Bearer {TOKEN}") is None and TOKEN not in repr(open_metrics)


def test_unreadable_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="STREAM_APP_HTTP_TOKEN_FILE"):
        BearerAuth.from_settings(Settings(http_token_file=str(tmp_path / "missing")))


def test_openapi_describes_the_bearer_scheme() -> None:
    assert "security" not in openapi_document()
    doc = openapi_document(BearerAuth(TOKEN))
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {**doc["components"]["securitySchemes"]["bearerAuth"],
                                                                  "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/health"]["get"]["security"] == [] and doc["paths"]["/ready"]["get"]["security"] == []
    assert "401" in doc["paths"]["/score"]["post"]["responses"]
    assert "401" in doc["paths"]["/metrics"]["get"]["responses"]


def _stub(settings: Settings) -> Any:
    from prometheus_client import CollectorRegistry

    from stream_app.worker.metrics import Metrics

    return types.SimpleNamespace(settings=settings, metrics=Metrics(CollectorRegistry()),
                                 readiness=lambda: {"models_loaded": True}, models_info=lambda: {"onnx": "v1"},
                                 cards={}, horizon_ms=1)


def test_the_worker_web_server_enforces_the_token() -> None:
    """The real Faust web app (aiohttp) with the pages registered, driven by aiohttp's test client."""
    import faust
    from aiohttp.test_utils import TestClient, TestServer

    app = faust.App("test-http-auth", broker="memory://")
    register(_stub(Settings(http_token=TOKEN)), app)

    async def run() -> dict[str, tuple[int, Any]]:
        seen = {}
        async with TestClient(TestServer(app.web.web_app)) as client:
            for path in ("/health", "/ready", "/models", "/metrics", "/openapi.json", "/not-a-page"):
                r = await client.get(path)
                seen[path] = (r.status, r.headers.get("WWW-Authenticate"))
            r = await client.post("/score", data=b"{}", headers={"Authorization": "Bearer wrong"})
            seen["/score wrong"] = (r.status, (await r.json())["error"])
            r = await client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"})
            seen["/models ok"] = (r.status, await r.json())
        return seen

    seen = asyncio.run(run())
    assert seen["/health"][0] == 200 and seen["/ready"][0] == 200
    for path in ("/models", "/metrics", "/openapi.json", "/not-a-page"):
        assert seen[path] == (401, 'Bearer realm="stream_app"'), path
    assert seen["/score wrong"] == (401, "invalid_token")
    assert seen["/models ok"] == (200, {"onnx": "v1"})
