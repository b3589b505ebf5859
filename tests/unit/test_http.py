"""Request parsing of POST /score: every bad body is a 4xx with a reason, never an exception."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.events import Transaction
from stream_app.worker.http import MAX_BATCH, RequestError, openapi_document, parse_score_request

TX = Transaction("tx-1", "card_1", "m_1", 10.0, "EUR", 1_767_225_600_000, "FR", "pos", "5411")


def test_one_object_or_a_list() -> None:
    assert parse_score_request(TX.to_bytes(), 16384) == ([TX], True)
    txs, single = parse_score_request(b"[" + TX.to_bytes() + b"," + TX.to_bytes() + b"]", 16384)
    assert txs == [TX, TX] and not single


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"", 400, "empty_body"), (b"{nope", 400, "invalid_json"), (b"[]", 400, "batch_size"),
    (b"[" + b",".join([TX.to_bytes()] * (MAX_BATCH + 1)) + b"]", 400, "batch_size"),
    (b'[{"tx_id": "x"}, 3]', 422, "invalid_transaction"), (b'"text"', 400, "invalid_json"),
])
def test_bad_bodies(body: bytes, status: int, error: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_score_request(body, 16384)
    assert (info.value.status, info.value.error) == (status, error)


def test_invalid_items_are_reported_by_index() -> None:
    bad = {**TX.to_json_dict(), "amount": -3}
    with pytest.raises(RequestError) as info:
        parse_score_request(orjson.dumps([TX.to_json_dict(), bad]), 16384)
    assert info.value.items == [{"index": 1, "reason": "invalid_value", "detail": info.value.items[0]["detail"],
                                 "field": "amount"}]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bodies_are_request_errors(body: bytes) -> None:
    try:
        parse_score_request(body, 16384)
    except RequestError as exc:
        assert 400 <= exc.status < 500


def test_openapi_document_describes_the_pages() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.") and {"/score", "/health", "/ready", "/models"} <= set(doc["paths"])
    assert {"200", "400", "422"} <= set(doc["paths"]["/score"]["post"]["responses"])


def test_published_schemas_are_current() -> None:
    import json
    from pathlib import Path

    from stream_app.domain.schemas import SCHEMAS

    directory = Path(__file__).parents[2] / "schemas"
    for name, schema in SCHEMAS.items():
        assert json.loads((directory / f"{name}.schema.json").read_text()) == schema, name
