"""The alert review queue: open alerts, one analyst's claim at a time, verdicts that become labels. No Kafka here.

The console (:mod:`stream_app.review`) feeds it the ``fraud-alerts``, ``scores`` and ``labels`` topics and turns
its answers into pushed page updates and published labels. Every record read is treated as hostile: a topic
is writable by whoever has the ACL, so ids are checked, card numbers masked before anything is kept, and the
page renders every field as text.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import orjson

from stream_app.domain.events import ANALYST_RE, Label, is_id
from stream_app.domain.pan import PanTokenizer, pan_digits

#: Masks card numbers (no key: ``************1111``) in every record before the queue keeps it.
_MASK = PanTokenizer()
RECENT_PER_CARD = 8


class ReviewError(ValueError):
    """An action the queue refuses: ``status`` is the HTTP answer (404 unknown alert, 409 claimed by another)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True, slots=True)
class Claim:
    analyst: str
    expires_ms: int


def masked(value: Any) -> Any:
    """``value`` with card numbers masked in every string; numbers are left alone (masking the record's bytes
    would cut into a float's long fraction and leave invalid JSON)."""
    if isinstance(value, str):
        return _MASK.mask(value.encode()).decode() if any(c.isdigit() for c in value) else value
    if isinstance(value, dict):
        return {masked(k): masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def _record(raw: bytes | None) -> dict[str, Any] | None:
    """A JSON object, or None."""
    try:
        obj = orjson.loads(raw or b"")
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _ids_ok(obj: dict[str, Any], *names: str) -> bool:
    return all(is_id(obj.get(n)) for n in names)


def check_analyst(analyst: Any) -> str:
    if not isinstance(analyst, str) or not ANALYST_RE.match(analyst):
        raise ReviewError(400, "invalid_analyst", "analyst: 1 to 64 letters, digits or _.:@-")
    return analyst


class ReviewQueue:
    """Open alerts (newest ``max_open`` kept), their claims, and the recent transactions of their cards.

    An alert leaves the queue when a label for its transaction is seen on the labels topic (from this console,
    another one, or a chargeback feed), so a verdict given elsewhere closes it here too."""

    def __init__(self, claim_ms: int = 300_000, max_open: int = 1000, max_cards: int = 100_000,
                 max_decided: int = 100_000) -> None:
        self.claim_ms = claim_ms
        self.max_open = max_open
        self.max_cards = max_cards
        self.max_decided = max_decided
        self.alerts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.claims: dict[str, Claim] = {}
        self.recent: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self.decided: OrderedDict[str, None] = OrderedDict()  # tx_ids with a label: their alerts are closed

    def add_alert(self, raw: bytes | None) -> dict[str, Any] | None:
        """The alert as the page shows it, or None (unreadable, already open, or its transaction labelled)."""
        alert = _record(raw)
        alert = None if alert is None else masked(alert)
        if alert is None or not _ids_ok(alert, "alert_id", "tx_id", "card_id") or alert["alert_id"] != alert["tx_id"]:
            return None  # alert_id equals tx_id (schemas/alert.schema.json): a label closes the alert of its tx_id
        if alert["alert_id"] in self.alerts or alert["tx_id"] in self.decided:
            return None
        self.alerts[alert["alert_id"]] = alert
        while len(self.alerts) > self.max_open:
            gone, _ = self.alerts.popitem(last=False)
            self.claims.pop(gone, None)
        return self.view(alert["alert_id"])

    def add_score(self, raw: bytes | None) -> None:
        """A score record: the newest few of each card are its recent transactions. Only the kept fields are
        masked (the whole record, with its ~50 features, cost 4 times as much)."""
        score = _record(raw)
        if score is None or not _ids_ok(score, "tx_id", "card_id") or pan_digits(score["card_id"]) is not None:
            return  # a card number is never kept, not even as a key
        features = score.get("features")
        amount = features.get("amount_eur") if isinstance(features, dict) else None
        card = score["card_id"]
        recent = self.recent.pop(card, None) or deque(maxlen=RECENT_PER_CARD)
        recent.append(masked({"tx_id": score["tx_id"], "merchant_id": score.get("merchant_id"),
                              "event_time": score.get("event_time"), "amount_eur": amount,
                              "decision": score.get("decision"), "risk_score": score.get("risk_score")}))
        self.recent[card] = recent
        if len(self.recent) > self.max_cards:
            self.recent.popitem(last=False)

    def add_label(self, label: Label) -> str | None:
        """A label seen on the labels topic: the alert it closes, if one is open."""
        self.decided[label.tx_id] = None
        self.decided.move_to_end(label.tx_id)
        if len(self.decided) > self.max_decided:
            self.decided.popitem(last=False)
        if self.alerts.pop(label.tx_id, None) is None:
            return None
        self.claims.pop(label.tx_id, None)
        return label.tx_id

    def view(self, alert_id: str) -> dict[str, Any]:
        """An alert with its claim and its card's recent transactions (by event time, newest first; itself
        excluded). Score records are keyed by tx_id, so a card's arrive from several partitions out of order."""
        alert = self.alerts[alert_id]
        claim = self.claims.get(alert_id)
        recent = sorted((t for t in self.recent.get(alert["card_id"], ()) if t["tx_id"] != alert["tx_id"]),
                        key=lambda t: str(t["event_time"]), reverse=True)
        return {"alert": alert, "recent": recent,
                "claim": None if claim is None else {"analyst": claim.analyst, "expires_ms": claim.expires_ms}}

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.view(a) for a in self.alerts]

    def _open(self, alert_id: str) -> dict[str, Any]:
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise ReviewError(404, "unknown_alert", "no open alert with this id (decided, or never seen)")
        return alert

    def claim(self, alert_id: str, analyst: str, now_ms: int) -> Claim:
        """Claim (or renew one's own claim on) an alert; another analyst's live claim is a 409."""
        self._open(alert_id)
        held = self.claims.get(alert_id)
        if held is not None and held.analyst != analyst and held.expires_ms > now_ms:
            raise ReviewError(409, "claimed", f"claimed by {held.analyst}")
        claim = self.claims[alert_id] = Claim(analyst, now_ms + self.claim_ms)
        return claim

    def release(self, alert_id: str, analyst: str) -> None:
        self._open(alert_id)
        held = self.claims.get(alert_id)
        if held is None or held.analyst != analyst:
            raise ReviewError(409, "not_claimed", "you do not hold this alert's claim")
        del self.claims[alert_id]

    def verdict(self, alert_id: str, analyst: str, is_fraud: bool, now_ms: int) -> Label:
        """The label to publish for a verdict; only the analyst holding a live claim may give it. The alert stays
        open until the label is confirmed by the broker and closes it (:meth:`add_label`)."""
        alert = self._open(alert_id)
        held = self.claims.get(alert_id)
        if held is None or held.analyst != analyst or held.expires_ms <= now_ms:
            raise ReviewError(409, "not_claimed", "claim the alert first (a claim expires)")
        return Label(alert["tx_id"], alert["card_id"], is_fraud, "analyst", now_ms, analyst)

    def expire(self, now_ms: int) -> list[str]:
        """Release the claims left open past their expiry; returns their alert ids."""
        gone = [a for a, c in self.claims.items() if c.expires_ms <= now_ms]
        for a in gone:
            del self.claims[a]
        return gone
