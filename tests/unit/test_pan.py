"""Card-number tokenization: what counts as a card number, stable keyed tokens, and no raw number in
anything the pipeline writes (score, alert and dead-letter records, re-keyed and parked bytes, logs)."""

from __future__ import annotations

import base64
import random
import re

import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.decision import ReasonModel
from stream_app.domain.events import NO_PAN_KEY, InvalidEvent, parse_label, parse_transaction
from stream_app.domain.features import FEATURE_NAMES
from stream_app.domain.ingress import Ingress, capture, capture_key, join_label
from stream_app.domain.learning import Captured, ParkedLabel
from stream_app.domain.pan import PanTokenizer, is_token, luhn_ok, pan_digits
from stream_app.domain.records import Source, alert_record, dead_letter_record, score_record
from stream_app.domain.scoring import Scored
from stream_app.settings import Settings

KEY = b"test-pan-key-0123456789abcdef"
PANS = PanTokenizer(KEY)
VISA = "4111111111111111"
GOOD = {"tx_id": "tx-1", "card_id": VISA, "merchant_id": "m_1", "amount": 12.5, "currency": "EUR",
        "timestamp": "2026-01-01T10:00:00Z", "country": "FR", "channel": "pos", "mcc": "5411"}
LABEL = {"tx_id": "tx-1", "card_id": VISA, "label": "fraud", "source": "chargeback",
         "label_time": "2026-01-02T10:00:00Z"}
SOURCE = Source("transactions", 0, 7, 1_767_261_600_000)


def with_luhn(body: str) -> str:
    """``body`` + the check digit that makes it pass Luhn."""
    return body + next(d for d in "0123456789" if luhn_ok(body + d))


pans_strategy = st.integers(12, 18).flatmap(
    lambda n: st.text("0123456789", min_size=n, max_size=n)).filter(lambda b: not (len(b) == 12 and b[0] == "1")
                                                                    ).map(with_luhn)


def test_known_card_numbers_and_non_numbers() -> None:
    assert pan_digits(VISA) == VISA
    assert pan_digits("4111 1111 1111 1111") == pan_digits("4111-1111-1111-1111") == VISA
    assert pan_digits(" 378282246310005 ") == "378282246310005"  # Amex, 15 digits
    assert pan_digits("4111111111111112") is None  # fails Luhn
    assert pan_digits("card_4111111111111111") is None  # an id that merely contains digits
    assert pan_digits("411111111111") is None  # 12 digits
    assert pan_digits("1767225600000") is None  # 13 digits starting with 1: epoch ms, not a card
    assert pan_digits("4111--1111-1111-1111") is None  # not a card number's spelling


@settings(max_examples=300, derandomize=True, deadline=None)
@given(pans_strategy, st.sampled_from(["", " ", "-"]))
def test_luhn_valid_numbers_are_always_tokenized_stably_and_keyed(digits: str, sep: str) -> None:
    spelled = sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))
    tx = parse_transaction(orjson.dumps({**GOOD, "card_id": spelled}), pans=PANS)
    assert is_token(tx.card_id) and tx.card_id == PANS.token(digits)
    assert digits not in tx.card_id and re.fullmatch(r"tok_[0-9a-f]{32}", tx.card_id)
    assert parse_transaction(orjson.dumps({**GOOD, "card_id": digits}), pans=PanTokenizer(KEY)) == tx  # stable
    assert PanTokenizer(b"another-key-0123456789").token(digits) != tx.card_id  # keyed
    with pytest.raises(InvalidEvent) as info:  # no key: refused, never stored
        parse_transaction(orjson.dumps({**GOOD, "card_id": spelled}))
    assert info.value.reason == "raw_pan" and info.value.field == "card_id"


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True))
def test_other_card_ids_are_untouched(card_id: str) -> None:
    if pan_digits(card_id) is not None:
        return
    tx = parse_transaction(orjson.dumps({**GOOD, "card_id": card_id}), pans=PANS)
    assert tx.card_id == card_id
    assert parse_transaction(orjson.dumps({**GOOD, "card_id": card_id})).card_id == card_id


@settings(max_examples=200, derandomize=True, deadline=None)
@given(pans_strategy, st.binary(max_size=40), st.binary(max_size=40))
def test_masking_removes_every_card_number_from_bytes(digits: str, before: bytes, after: bytes) -> None:
    # non-digit borders: a number glued to more digits is a longer number, not this card number
    data = before.rstrip(b"0123456789 -") + b"|" + digits.encode() + b"|" + after.lstrip(b"0123456789 -")
    for pans in (PANS, NO_PAN_KEY):
        masked = pans.mask(data)
        assert digits.encode() not in masked
    assert PANS.token(digits).encode() in PANS.mask(data)


def test_masking_keeps_other_bytes_and_timestamps() -> None:
    raw = orjson.dumps({**GOOD, "timestamp": 1767261600000, "card_id": "4111 1111 1111 1111", "n": "12 25"})
    masked = PANS.mask(raw)
    assert orjson.loads(masked) == {**orjson.loads(raw), "card_id": PANS.token(VISA)}
    assert NO_PAN_KEY.mask(b'{"card_id":4111111111111111}') == b'{"card_id":************1111}'
    escaped = b'{"card_id": "\\u0034111111111111111"}'  # JSON escapes hide digits from a byte scan
    assert orjson.loads(PANS.mask(escaped)) == {"card_id": PANS.token(VISA)}


def test_key_from_settings_and_file(tmp_path) -> None:
    assert not PanTokenizer.from_settings(Settings()).keyed
    assert PanTokenizer.from_settings(Settings(pan_key=KEY.decode())) == PANS
    (tmp_path / "key").write_bytes(KEY + b"\n")
    assert PanTokenizer.from_settings(Settings(pan_key_file=str(tmp_path / "key"))) == PANS
    with pytest.raises(ValueError):
        Settings(pan_key="short")
    with pytest.raises(ValueError):
        Settings(pan_key=KEY.decode(), pan_key_file=str(tmp_path / "key"))
    with pytest.raises(ValueError):
        PanTokenizer.from_settings(Settings(pan_key_file=str(tmp_path / "missing")))


def test_labels_are_tokenized_like_transactions() -> None:
    label = parse_label(orjson.dumps(LABEL), pans=PANS)
    assert label.card_id == PANS.token(VISA)
    assert parse_label(label.to_bytes()) == label
    with pytest.raises(InvalidEvent, match="raw card number"):
        parse_label(orjson.dumps(LABEL))


def _reasons() -> ReasonModel:
    n = len(FEATURE_NAMES)
    return ReasonModel((0.0,) * n, (1.0,) * n, (1.0,) * n, (1.0 / n,) * n)


@pytest.mark.parametrize("pans", [PANS, NO_PAN_KEY], ids=["keyed", "no_key"])
def test_nothing_the_pipeline_writes_holds_a_raw_card_number(pans: PanTokenizer) -> None:
    """Mixed traffic with card numbers in every spelling and in bad events, through the worker's ingress
    and label join; every byte that would be published, parked or logged is scanned."""
    rng = random.Random(7)
    numbers = [with_luhn("".join(rng.choice("0123456789") for _ in range(15))) for _ in range(20)]
    numbers = [n for n in numbers if pan_digits(n)] + [VISA]
    ingress = Ingress(16384, 7 * 86_400_000, pans, "transactions", 4)
    states: dict = {}
    written: list[bytes] = []
    log_lines: list[str] = []
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(file=_Collect(log_lines)))
    log = structlog.get_logger("stream_app.worker")
    try:
        for i in range(400):
            number = rng.choice(numbers)
            spelled = rng.choice([number, " ".join(number[j:j + 4] for j in range(0, len(number), 4)), number[:6]
                                  + "-" + number[6:]])
            body = {**GOOD, "tx_id": f"tx-{i}", "card_id": spelled, "timestamp": 1_767_261_600_000 + i * 60_000}
            if i % 5 == 1:
                body["amount"] = -1  # dead-lettered with the number inside
            if i % 7 == 2:
                body["card_id"] = int(number)  # wrong type, the number in JSON
            raw = orjson.dumps(body)
            key = rng.choice([number.encode(), None, b"card"])
            out = ingress(raw, key, "transactions", states, lambda _card: None, partition=None)
            if out.kind == "scored":
                scored = Scored(out.tx, out.row, 0.9, 0.5, 0.9, "decline", {"onnx": "o", "river": "r"}, "weighted",
                                0.0)
                written += [orjson.dumps(score_record(scored, SOURCE, 1)),
                            orjson.dumps(alert_record(scored, _reasons(), 1)), out.tx.card_id.encode()]
                log.debug("alert.raised", tx_id=out.tx.tx_id, card_id=out.tx.card_id)
            elif out.kind == "rekeyed":
                written += [out.tx.card_id.encode(), out.forward]
            elif out.kind == "dead_lettered":
                record = dead_letter_record(raw, out.error, SOURCE, key, 1, pans)
                written += [orjson.dumps(record), base64.b64decode(record["original_b64"]),
                            base64.b64decode(record["key_b64"] or "")]
                log.debug("event.dead_lettered", reason=out.error.reason)
        captured: dict[bytes, bytes] = {}
        parked: dict[bytes, bytes] = {}
        for i in range(50):
            raw = orjson.dumps({**LABEL, "tx_id": f"tx-{i}", "card_id": rng.choice(numbers)})
            out = join_label(raw, VISA.encode(), ("labels", 0, i), 1, max_bytes=16384, pans=pans,
                             captured=captured, parked=parked, input_topic="labels" if i % 2 else None)
            if out.kind == "rekeyed":
                written += [out.label.card_id.encode(), out.forward]
            elif out.kind == "parked" and i % 3 == 0:  # its transaction is scored now: joined, learned
                capture(capture_key(out.label.card_id, out.label.tx_id),
                        Captured([0.0] * len(FEATURE_NAMES), {"onnx": 0.5}, 1), captured, parked, pans)
                written += list(captured) + list(parked)
            if out.kind == "dead_lettered":
                record = dead_letter_record(raw, out.error, SOURCE, VISA.encode(), 1, pans)
                written += [base64.b64decode(record["original_b64"]), base64.b64decode(record["key_b64"])]
        for value in parked.values():
            p = ParkedLabel.from_bytes(value)
            written += [value, p.raw, p.key or b""]
    finally:
        structlog.reset_defaults()
    assert len(written) > 400 and log_lines
    haystack = b"\n".join(written) + "\n".join(log_lines).encode()
    for number in numbers:
        for spelled in (number, " ".join(number[j:j + 4] for j in range(0, len(number), 4)),
                        number[:6] + "-" + number[6:]):
            assert spelled.encode() not in haystack
    if pans.keyed:
        assert PANS.token(VISA).encode() in haystack


class _Collect:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass

