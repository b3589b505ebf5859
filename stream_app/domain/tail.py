"""What `stream-app tail` shows of a message: one readable line or one JSON line, and its filters. Pure.

Anyone who can write to a topic chooses its bytes, so every value shown is treated as hostile: card
numbers are masked first (:meth:`PanTokenizer.mask_json`, tokens when the PAN key is set, the last
four digits without), then every character a terminal could act on (control and format characters,
line separators, invalid UTF-8) is printed as an escape, and long values are cut. A line is always
one line, whatever the record holds; records of an unexpected shape are shown, never an error.

The kind of record is recognised by its fields, not by its topic's name (topic names are settings):
alerts, scores, dead letters, labels, river examples, transactions, other JSON, and raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from stream_app.domain.events import format_ts
from stream_app.domain.pan import PanTokenizer, pan_digits

PREVIEW_CHARS = 80  # of a dead letter's original bytes, or of a record of no known kind
FIELD_CHARS = 64  # of an id or another single value
MAX_DEPTH = 64  # nesting of a JSON value shown as JSON
_MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: format_ts's calendar ends there


@dataclass(frozen=True, slots=True)
class Message:
    """A message as read from Kafka: its position, broker timestamp (ms), key and value."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class View:
    """A message decoded for people: ``record`` is its JSON value with card numbers masked (``None``
    when the value is not JSON: then ``text`` holds its masked bytes as text, invalid UTF-8 escaped)."""

    message: Message
    kind: str
    record: Any
    text: str | None
    key: str | None
    original: bytes | None = None  # a dead letter's original bytes, masked; None when not base64

    @property
    def fields(self) -> Mapping[str, Any]:
        return self.record if isinstance(self.record, dict) else {}


def escape(text: str, limit: int | None = FIELD_CHARS) -> str:
    """``text`` safe to print on a terminal: every non-printable character (controls such as ESC,
    format characters such as the right-to-left override, line and paragraph separators, tabs) as a
    Python escape (``\\x1b``, ``\\u202e``), then cut to ``limit`` characters with an ellipsis."""
    out = text if text.isprintable() else "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if limit is None or len(out) <= limit else out[:limit - 1] + "…"


def _bytes_text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _kind(record: Any) -> str:
    if not isinstance(record, dict):
        return "raw" if record is None else "json"
    if "alert_id" in record:
        return "alert"
    if "decision" in record and "risk_score" in record:
        return "score"
    if "original_b64" in record and "reason" in record:
        return "dead-letter"
    if "label" in record and "features" in record:
        return "example"
    if "label" in record:
        return "label"
    if "amount" in record:
        return "transaction"
    return "json"


def _shallow(value: Any) -> bool:
    """``value`` nests at most :data:`MAX_DEPTH` containers: deeper JSON is shown as text, because
    masking and printing recurse (a few hundred levels of ``[`` would exhaust Python's stack)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def _masked_original(encoded: Any, pans: PanTokenizer) -> bytes | None:
    if not isinstance(encoded, str):
        return None
    try:
        return pans.mask(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        return None


def decode(message: Message, pans: PanTokenizer) -> View:
    """The message's value parsed as JSON (or kept as text) and its key as text, card numbers masked; a
    dead letter's original bytes too (the worker masks them, but anyone may write to a topic), written back
    into ``original_b64``."""
    value = message.value or b""
    try:
        record: Any = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        record = None
    if record is None or not _shallow(record):
        record, text = None, _bytes_text(pans.mask(value)) if value else None
    else:
        record, text = pans.mask_json(record), None
    key = None if message.key is None else _bytes_text(pans.mask(message.key))
    kind = _kind(record)
    original = _masked_original(record["original_b64"], pans) if kind == "dead-letter" else None
    if original is not None:
        record = {**record, "original_b64": base64.b64encode(original).decode()}
    return View(message, kind, record, text, key, original)


def decisions(view: View) -> set[str]:
    decision = view.fields.get("decision")
    return {decision} if isinstance(decision, str) else set()


def reason_codes(view: View) -> list[str]:
    """A dead letter's reason; an alert's reasons (the features that pushed its risk up); and for alerts and
    scores, the id and reason code of every rule that matched (shadow ones included)."""
    if view.kind == "dead-letter":
        return [str(view.fields["reason"])]
    reasons = view.fields.get("reasons")
    features = [str(r["feature"]) for r in reasons if isinstance(r, dict) and "feature" in r] \
        if isinstance(reasons, list) else []
    return features + [str(h[k]) for h in _rule_hits(view.fields) for k in ("id", "reason") if h.get(k)]


def _rule_hits(fields: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``rules.hits`` of a score record or alert (records written while a rule set served)."""
    rules = fields.get("rules")
    hits = rules.get("hits") if isinstance(rules, dict) else None
    return [h for h in hits if isinstance(h, dict)] if isinstance(hits, list) else []


def cards(view: View) -> set[str]:
    """The card tokens a message is about: its ``card_id``; for a dead letter, the original's card id
    when the original is a JSON object, else its key (producers key transactions by card)."""
    found = {view.fields["card_id"]} if isinstance(view.fields.get("card_id"), str) else set()
    if view.kind == "dead-letter":
        try:
            original = orjson.loads(view.original) if view.original else None
        except orjson.JSONDecodeError:
            original = None
        if isinstance(original, dict) and isinstance(original.get("card_id"), str):
            found.add(original["card_id"])
        elif view.key is not None:
            found.add(view.key)
    return found


@dataclass(frozen=True, slots=True)
class Filters:
    """Which messages are shown: each non-empty set must match (AND); values inside one set are
    alternatives (OR). Reason codes compare case-insensitively."""

    decisions: frozenset[str] = frozenset()
    cards: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()

    def match(self, view: View) -> bool:
        if self.decisions and not self.decisions & decisions(view):
            return False
        if self.reasons and not {r.casefold() for r in self.reasons} & {r.casefold() for r in reason_codes(view)}:
            return False
        return not self.cards or bool(self.cards & cards(view))


def card_filter(value: str, pans: PanTokenizer) -> str:
    """What ``--card`` compares with records: a card token as records show it, or a card number's
    token under the workers' PAN key. Raises ``ValueError`` (which never repeats the number) for a card
    number without a key: records hold no card numbers, so it could match nothing."""
    digits = pan_digits(value)
    if digits is None:
        return value.strip()
    token = pans.token(digits)
    if token is None:
        raise ValueError("--card got a card number, but no PAN key is set (STREAM_APP_PAN_KEY or "
                         "STREAM_APP_PAN_KEY_FILE, the workers' key): records hold tokens; pass the token instead")
    return token


def _iso(ts_ms: int) -> str | None:
    """The broker timestamp in RFC 3339; ``None`` when there is none (-1) or it is off the calendar."""
    return format_ts(ts_ms) if 0 <= ts_ms <= _MAX_TS_MS else None


def _value(value: Any, spec: str = "", limit: int = FIELD_CHARS) -> str:
    """A field as text: a finite number formatted with ``spec``, anything else escaped."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), limit)


def _pairs(fields: Mapping[str, Any], names: Iterable[tuple[str, str]], spec: str = "") -> list[str]:
    return [f"{label}={_value(fields[name], spec)}" for name, label in names if name in fields]


def _money(fields: Mapping[str, Any]) -> list[str]:
    """``912.44 EUR ES``: amount, currency and country where the record has them."""
    parts = [_value(fields["amount"], ".2f")] if "amount" in fields else []
    return parts + [_value(fields[n]) for n in ("currency", "country") if n in fields]


def _reasons(fields: Mapping[str, Any]) -> str:
    reasons = fields.get("reasons")
    if not isinstance(reasons, list):
        return "-"
    shown = [f"{escape(str(r.get('feature')))}={_value(r.get('value'), 'g')}" if isinstance(r, dict)
             else _value(r) for r in reasons]
    return ", ".join(shown) or "-"


def _ids(fields: Mapping[str, Any]) -> list[str]:
    return _pairs(fields, (("tx_id", "tx"), ("card_id", "card"), ("merchant_id", "merchant")))


def _decided(fields: Mapping[str, Any]) -> list[str]:
    """``decline risk=0.97``: the decision padded to a column, then the combined risk."""
    return [f"{_value(fields.get('decision', '-')):<7}", *_pairs(fields, (("risk_score", "risk"),), ".2f")]


def _rules(fields: Mapping[str, Any]) -> list[str]:
    """``rules=block-merchant:decline,velocity:review(shadow)``: the rules that matched, if any."""
    hits = [f"{h.get('id')}:{h.get('action')}" + ("(shadow)" if h.get("mode") == "shadow" else "")
            for h in _rule_hits(fields)]
    return [f"rules={escape(','.join(hits))}"] if hits else []


def _alert(view: View) -> list[str]:
    f = view.fields
    return [*_decided(f), *_ids(f), *_money(f), *_rules(f), f"| {_reasons(f)}"]


def _score(view: View) -> list[str]:
    f = view.fields
    timing = f.get("timing")
    latency = _pairs(timing, (("latency_ms", "latency_ms"),)) if isinstance(timing, dict) else []
    return [*_decided(f), *_ids(f), *_rules(f), *latency]


def _dead_letter(view: View) -> list[str]:
    f = view.fields
    source = f.get("source")
    where = (f"{_value(source.get('topic'))}@{_value(source.get('partition'))}:{_value(source.get('offset'))}"
             if isinstance(source, dict) else "?")
    preview = "(not base64)" if view.original is None else escape(_bytes_text(view.original), PREVIEW_CHARS)
    size = [f"{_value(f['original_size'])} B"] if "original_size" in f else []
    field = _pairs(f, (("field", "field"),)) if f.get("field") is not None else []
    detail = [f"| {_value(f['detail'], limit=PREVIEW_CHARS)}"] if f.get("detail") else []
    return [f"{_value(f['reason']):<18}", f"from {where}", *size, *field, *detail, f"| {preview}"]


def _label(view: View) -> list[str]:
    f = view.fields
    return [f"{_value(f['label']):<7}", *_ids(f), *_pairs(f, (("source", "source"),))]


def _example(view: View) -> list[str]:
    f = view.fields
    scores = f.get("scores")
    return [*_pairs(f, (("label", "label"), ("tx_id", "tx"))),
            *(_pairs(scores, (("onnx", "onnx"), ("river", "river")), ".2f") if isinstance(scores, dict) else [])]


def _transaction(view: View) -> list[str]:
    f = view.fields
    return [*_ids(f), *_money(f), *_pairs(f, (("channel", "channel"), ("mcc", "mcc")))]


def _json(view: View) -> list[str]:
    return [escape(json.dumps(view.record, ensure_ascii=False, separators=(",", ":")), PREVIEW_CHARS)]


def _raw(view: View) -> list[str]:
    return [f"{len(view.message.value or b'')} B", escape(view.text or "", PREVIEW_CHARS)]


_BODIES: dict[str, Callable[[View], list[str]]] = {
    "alert": _alert, "score": _score, "dead-letter": _dead_letter, "label": _label, "example": _example,
    "transaction": _transaction, "json": _json, "raw": _raw}


def line(view: View) -> str:
    """One readable line: broker time, kind, then what an analyst looks at for that kind."""
    time = _iso(view.message.timestamp_ms) or "-" * 24
    return " ".join([time, f"{view.kind.upper():<11}", *_BODIES[view.kind](view)])


def json_line(view: View) -> str:
    """One JSON object: where the message was (topic, partition, offset, broker time), its key and its
    ``record`` (``value``: the text of a value that is not JSON), card numbers masked. Pure ASCII, every
    control character escaped, so it is as safe on a terminal as in ``jq``."""
    m = view.message
    out: dict[str, Any] = {"topic": m.topic, "partition": m.partition, "offset": m.offset,
                           "timestamp": _iso(m.timestamp_ms),
                           "key": view.key}
    out["record" if view.text is None else "value"] = view.record if view.text is None else view.text
    # DEL is the one ASCII control character JSON allows raw; it only occurs inside strings.
    return json.dumps(out, ensure_ascii=True, separators=(",", ":")).replace("\x7f", "\\u007f")
