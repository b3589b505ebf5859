"""The review queue without Kafka: claims by one analyst at a time with expiry, verdicts as analyst labels,
alerts closed by any label for their transaction, card numbers masked, hostile records refused."""

from __future__ import annotations

import orjson
import pytest

from stream_app.domain.events import parse_label
from stream_app.domain.review import ReviewError, ReviewQueue, check_analyst

ALERT = {"alert_id": "tx-1", "tx_id": "tx-1", "card_id": "card_1", "merchant_id": "m_1", "amount": 912.4,
         "currency": "EUR", "decision": "decline", "risk_score": 0.97}


def score(tx_id: str, card: str = "card_1", minute: int = 0) -> bytes:
    return orjson.dumps({"tx_id": tx_id, "card_id": card, "merchant_id": "m_1", "decision": "approve",
                         "risk_score": 0.01, "event_time": f"2026-01-01T00:{minute:02d}:00Z",
                         "features": {"amount_eur": 12.5}})


def test_one_analyst_claims_at_a_time_and_a_claim_expires() -> None:
    q = ReviewQueue(claim_ms=1000)
    assert q.add_alert(orjson.dumps(ALERT)) is not None
    assert q.add_alert(orjson.dumps(ALERT)) is None, "an alert redelivered is not queued twice"
    assert q.claim("tx-1", "alice", now_ms=0).expires_ms == 1000
    with pytest.raises(ReviewError) as taken:
        q.claim("tx-1", "bob", now_ms=500)
    assert taken.value.status == 409 and "alice" in taken.value.detail
    with pytest.raises(ReviewError):
        q.verdict("tx-1", "bob", True, now_ms=500)
    assert q.claim("tx-1", "alice", now_ms=900).expires_ms == 1900, "the holder renews"
    assert q.expire(now_ms=1899) == [] and q.expire(now_ms=1900) == ["tx-1"]
    assert q.claim("tx-1", "bob", now_ms=2000).analyst == "bob", "released by expiry"
    with pytest.raises(ReviewError):
        q.release("tx-1", "alice")
    q.release("tx-1", "bob")
    assert q.view("tx-1")["claim"] is None
    with pytest.raises(ReviewError) as unknown:
        q.claim("tx-404", "bob", now_ms=0)
    assert unknown.value.status == 404


def test_a_verdict_is_an_analyst_label_and_any_label_closes_the_alert() -> None:
    q = ReviewQueue()
    q.add_alert(orjson.dumps(ALERT))
    q.claim("tx-1", "alice@bank.example", now_ms=10)
    label = q.verdict("tx-1", "alice@bank.example", True, now_ms=20)
    parsed = parse_label(label.to_bytes())
    assert (parsed.tx_id, parsed.card_id, parsed.is_fraud, parsed.source, parsed.analyst) == (
        "tx-1", "card_1", True, "analyst", "alice@bank.example")
    assert "tx-1" in q.alerts, "open until the label is seen"
    assert q.add_label(parsed) == "tx-1" and not q.alerts and not q.claims
    assert q.add_alert(orjson.dumps(ALERT)) is None, "an alert read after its label stays closed"


def test_recent_transactions_of_the_card_newest_first_by_event_time_without_the_alerted_one() -> None:
    q = ReviewQueue()
    for i in (*range(8), 9, 8, 10, 11):  # 8 and 9 arrive out of order (from two partitions)
        q.add_score(score(f"tx-{i}", minute=i))
    q.add_score(score("tx-other", card="card_2"))
    q.add_alert(orjson.dumps({**ALERT, "alert_id": "tx-11", "tx_id": "tx-11"}))
    recent = q.view("tx-11")["recent"]
    assert [t["tx_id"] for t in recent] == [f"tx-{i}" for i in range(10, 3, -1)]
    assert recent[0]["amount_eur"] == 12.5 and recent[0]["merchant_id"] == "m_1"


def test_hostile_records_are_kept_as_data_refused_when_their_ids_are_not_ids() -> None:
    """A merchant id full of markup is kept as it is (the page renders it as text); a card number anywhere is
    masked before anything is kept; an alert without valid ids, or not a JSON object, is refused."""
    q = ReviewQueue()
    hostile = "<img src=x onerror=alert(1)>"
    view = q.add_alert(orjson.dumps({**ALERT, "merchant_id": hostile, "note": "4111 1111 1111 1111"}))
    assert view is not None and view["alert"]["merchant_id"] == hostile
    assert view["alert"]["note"] == "************1111"
    long_fraction = 0.4111111111111111  # a float's digits are no card number: masking bytes broke the JSON here
    view = q.add_alert(orjson.dumps({**ALERT, "alert_id": "tx-2", "tx_id": "tx-2", "risk_score": long_fraction,
                                     "reasons": [{"text": "card 4111111111111111", "value": long_fraction}]}))
    assert view is not None and view["alert"]["risk_score"] == long_fraction
    assert view["alert"]["reasons"] == [{"text": "card ************1111", "value": long_fraction}]
    q.add_score(orjson.dumps({**orjson.loads(score("tx-7")), "risk_score": long_fraction}))
    assert q.recent["card_1"][-1]["risk_score"] == long_fraction
    assert q.add_alert(orjson.dumps({**ALERT, "alert_id": "<b>", "tx_id": "<b>"})) is None
    assert q.add_alert(orjson.dumps({**ALERT, "alert_id": "tx-9"})) is None, "alert_id must equal tx_id"
    assert q.add_alert(orjson.dumps({**ALERT, "alert_id": "4111111111111111", "tx_id": "4111111111111111"})) is None
    assert q.add_alert(b"[1]") is None and q.add_alert(b"{no") is None and q.add_alert(None) is None
    q.add_score(b"{no")
    q.add_score(score("tx-5", card="4111111111111111"))
    assert "4111111111111111" not in q.recent
    q.add_score(orjson.dumps({**orjson.loads(score("tx-6")), "merchant_id": "4111-1111-1111-1111"}))
    assert q.recent["card_1"][-1]["merchant_id"] == "************1111"


@pytest.mark.parametrize("analyst", ["", "a b", "<script>", "x" * 65, None, 3])
def test_analyst_names_are_checked(analyst: object) -> None:
    with pytest.raises(ReviewError):
        check_analyst(analyst)


def test_the_console_pushes_queue_changes_and_drops_a_page_that_does_not_read() -> None:
    """Records read from the topics become frames for every page; a page whose frames pile up is dropped (it
    reconnects and gets a snapshot) rather than holding the console's memory."""
    import asyncio

    from stream_app.console.server import Console
    from stream_app.settings import Settings

    s = Settings()
    console = Console(s, claim_s=60)
    page: asyncio.Queue[bytes] = asyncio.Queue(maxsize=2)
    console.subscribers.add(page)
    console.on_record(s.scores_topic, score("tx-0"))
    console.on_record(s.alerts_topic, orjson.dumps(ALERT))
    console.on_record(s.labels_topic, b"{not a label")
    frame = orjson.loads(page.get_nowait().removeprefix(b"data: "))
    assert frame["type"] == "alert" and frame["view"]["recent"][0]["tx_id"] == "tx-0" and page.empty()
    label = {"tx_id": "tx-1", "card_id": "card_1", "label": "legit", "source": "chargeback",
             "label_time": "2026-01-02T00:00:00Z"}
    console.on_record(s.labels_topic, orjson.dumps(label))
    closed = orjson.loads(page.get_nowait().removeprefix(b"data: "))
    assert closed == {"type": "closed", "alert_id": "tx-1", "label": "legit", "source": "chargeback", "analyst": None}
    for i in range(3):
        console.push("released", alert_id=f"a{i}")
    assert page not in console.subscribers
