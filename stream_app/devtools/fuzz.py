"""Fuzzing of the worker's ingress decoder and label join with generated bad inputs.

``python -m stream_app.devtools.fuzz --n 100000`` generates ``n`` transaction messages and ``n`` label messages
(mutated valid events: byte flips, truncation, type swaps, huge numbers, NaN/Infinity, unicode,
nested junk, duplicate keys, oversize, empty and null values, non-UTF-8, wrong keys, card numbers in
every spelling, plus a share of valid, duplicate, late and foreign-keyed events) and drives each through
the worker's own decisions (:class:`stream_app.domain.ingress.Ingress` and :func:`stream_app.domain.ingress.join_label`,
the functions the agents call), then through what the agent would write: a dead-letter record for the
bad ones, score and alert records for the scored ones (scored by the shipped models in batches).

Every input must end as exactly one outcome, the outcomes must add up to the inputs, no exception may
escape (a crash), and no written byte may hold one of the raw card numbers that were sent. Prints counts
per outcome and reason; the last line is machine-readable::

    RESULT inputs=… crashes=0 dead_lettered=… by_reason=reason:count,… seconds=…
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_app.domain.entities import MODEL_FEATURES
from stream_app.domain.events import EUR_RATES, InvalidEvent, format_ts, parse_label
from stream_app.domain.features import CardState
from stream_app.domain.ingress import Ingress, capture, capture_key, join_label
from stream_app.domain.learning import Captured, ParkedLabel
from stream_app.domain.pan import PanTokenizer, luhn_ok, pan_digits
from stream_app.domain.records import Source, alert_record, dead_letter_record, score_record
from stream_app.domain.schemas import DLQ_REASONS
from stream_app.worker.delivery import decode_card, encode_card

MAX_BYTES = 16384
HORIZON_MS = 7 * 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01
TX_FIELDS = ("tx_id", "card_id", "merchant_id", "amount", "currency", "timestamp", "country", "channel", "mcc")
LABEL_FIELDS = ("tx_id", "card_id", "label", "source", "label_time")
FUZZ_KEY = b"fuzz-pan-key-0123456789abcdef"


def _with_luhn(body: str) -> str:
    return body + next(d for d in "0123456789" if luhn_ok(body + d))


#: Card numbers the fuzzer sends (Luhn-valid, 15 and 16 digits); none may come out raw.
PANS: tuple[str, ...] = tuple(_with_luhn(b) for b in ("411111111111111", "555555555555444", "37828224631000",
                                                      "601111111111111", "353011133330000"))

_JUNK_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1.5, 10**18, -(10**18), 1e308, -1e308, 5e-324, "", " ", "null", "NaN",
    "Infinity", "1e999", [], {}, [None], {"": None}, [[[[[]]]]], {"a": {"b": {"c": [1, "x"]}}},
    "\u0000", "\u202e\u200b", "ß" * 70, "𝟜𝟙𝟙𝟙", "４１１１１１１１１１１１１１１１", "card\n1", "x" * 65,
    "2026-13-45T25:61:61Z", "2026-01-01T10:00:00", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00Z",
    PANS[0], " ".join(PANS[1][i:i + 4] for i in range(0, 16, 4)), PANS[2][:5] + "-" + PANS[2][5:],
)
_RAW_LITERALS = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"123456789012345678901234567890",
                 b"0x10", b"01", b"1.", b".5", b"+1", b"true", b"null", b'"\\ud800"', b'"\\u0000"', b"[]", b"{}")


@dataclass
class Tally:
    """Outcomes of one kind of input (transactions or labels)."""

    inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)

    def crash(self, raw: bytes | None) -> None:
        if len(self.crashes) < 5:
            self.crashes.append(f"{raw if raw is None else raw[:120]!r}\n{traceback.format_exc()}")
        else:
            self.crashes.append("")
        self.outcomes["crash"] += 1


@dataclass(frozen=True, slots=True)
class Message:
    """One generated input message: how it was made (``valid``, ``redelivery``, ``late`` or the name of
    a mutation), its value and its key."""

    what: str
    value: bytes | None
    key: bytes | None


def spellings(pan: str) -> tuple[str, ...]:
    """A card number as producers write it: plain, in groups of four with spaces, with dashes."""
    groups = [pan[i:i + 4] for i in range(0, len(pan), 4)]
    return pan, " ".join(groups), "-".join(groups)


class Mutator:
    """Deterministic (seeded) generator of mostly-bad messages from valid ones; shared by this module
    (the worker's decision functions) and :mod:`stream_app.devtools.fuzz_e2e` (the running worker)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def card(self) -> Any:
        r = self.rng.random()
        if r < 0.15:
            pan = self.rng.choice(PANS)
            return self.rng.choice([pan, spellings(pan)[1], f" {pan} "])
        return f"card_{self.rng.randrange(300):04d}"

    def key(self, obj: dict[str, Any]) -> bytes | None:
        """A message key in any spelling: the event's card id, its card number spelled otherwise, another
        card, the tx_id, none, empty, binary, unicode."""
        rng = self.rng
        card = str(obj["card_id"])
        digits = pan_digits(card)
        return rng.choice([
            card.encode(), card.encode(), f"card_{rng.randrange(300):04d}".encode(), str(obj["tx_id"]).encode(),
            None, b"", rng.randbytes(rng.randint(1, 16)), f"cärd_ß_卡_{card}_🃏".encode(),
            rng.choice(spellings(digits or rng.choice(PANS))).encode(),
        ])

    def headers(self) -> list[tuple[str, bytes | None]]:
        """Message headers: none, a few, binary values, unicode or empty names, repeated names, a card
        number in a value, or hundreds of them."""
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:
            return []
        if kind == 1:
            return [(f"h{i}", rng.randbytes(rng.randint(0, 32))) for i in range(rng.randint(1, 5))]
        if kind == 2:
            return [("", b""), ("ключ-🔑", "значение".encode()), ("dup", b"1"), ("dup", b"2"), ("null", None)]
        if kind == 3:
            return [("card", rng.choice(spellings(rng.choice(PANS))).encode()), ("trace", rng.randbytes(16))]
        if kind == 4:
            return [(f"x-{i}", rng.randbytes(8)) for i in range(rng.randint(100, 500))]
        return [("big", rng.randbytes(rng.randint(1000, 20000)))]

    def sized(self, obj: dict[str, Any], size: int) -> bytes:
        """Exactly ``size`` bytes: the event padded with a ``note`` field, or cut when it is longer."""
        raw = orjson.dumps(obj)
        pad = size - len(raw) - len(b',"note":""')
        if pad < 0:
            return raw[:size]
        return raw[:-1] + b',"note":"' + b"x" * pad + b'"}'

    def valid_tx(self) -> dict[str, Any]:
        rng = self.rng
        self.n += 1
        amount = 0.0 if rng.random() < 0.05 else round(rng.uniform(0.01, 5000), 2)  # 0.00: a card verification
        return {"tx_id": f"tx-{self.n:08d}", "card_id": self.card(), "merchant_id": f"m_{rng.randrange(50)}",
                "amount": amount, "currency": rng.choice(list(EUR_RATES)),
                "timestamp": format_ts(T0 + self.n * 1000) if rng.random() < 0.5 else T0 + self.n * 1000,
                "country": rng.choice(["FR", "DE", "US", "BR"]), "channel": rng.choice(["pos", "ecom", "atm", "moto"]),
                "mcc": rng.choice(["5411", "5732", "6011"])}

    def valid_label(self, scored: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """A label for one of the ``scored`` (tx_id, card_id) pairs, mostly, or for a tx never scored."""
        rng = self.rng
        tx_id, card_id = (rng.choice(scored) if scored and rng.random() < 0.7
                          else (f"tx-x{rng.randrange(10**6)}", self.card()))
        verdict = random.Random(tx_id)  # one verdict per transaction: corrections are tested on their own
        return {"tx_id": tx_id, "card_id": card_id, "label": verdict.choice(["fraud", "legit"]),
                "source": verdict.choice(["chargeback", "analyst", "customer"]),
                "label_time": format_ts(T0 + rng.randrange(10**9))}

    # -- mutations: each takes a valid object and returns bytes --------------------------------------
    def flip(self, obj: dict[str, Any]) -> bytes:
        raw = bytearray(orjson.dumps(obj))
        for _ in range(self.rng.randint(1, 8)):
            raw[self.rng.randrange(len(raw))] = self.rng.randrange(256)
        return bytes(raw)

    def truncate(self, obj: dict[str, Any]) -> bytes:
        raw = orjson.dumps(obj)
        return raw[: self.rng.randrange(len(raw))]

    def swap_type(self, obj: dict[str, Any]) -> bytes:
        name = self.rng.choice(list(obj))
        return orjson.dumps({**obj, name: self.rng.choice(_JUNK_VALUES)})

    def raw_literal(self, obj: dict[str, Any]) -> bytes:
        name = self.rng.choice(list(obj))
        raw = orjson.dumps({**obj, name: "@@"})
        return raw.replace(b'"@@"', self.rng.choice(_RAW_LITERALS))

    def unicode(self, obj: dict[str, Any]) -> bytes:
        name = self.rng.choice(list(obj))
        text = "".join(chr(self.rng.choice([self.rng.randrange(32, 0xD800), self.rng.randrange(0xE000, 0x110000)]))
                       for _ in range(self.rng.randint(1, 20)))
        return orjson.dumps({**obj, name: text})

    def nested(self, obj: dict[str, Any]) -> bytes:
        depth = self.rng.choice([3, 100, 600, 2000])
        name = self.rng.choice(list(obj))
        return orjson.dumps({**obj, name: "@@"}).replace(b'"@@"', b"[" * depth + b"1" + b"]" * depth)

    def duplicate_keys(self, obj: dict[str, Any]) -> bytes:
        name = self.rng.choice(list(obj))
        extra = orjson.dumps({name: self.rng.choice(_JUNK_VALUES)})[1:-1]
        raw = orjson.dumps(obj)
        return raw[:-1] + b"," + extra + b"}" if self.rng.random() < 0.5 else b"{" + extra + b"," + raw[1:]

    def oversize(self, obj: dict[str, Any]) -> bytes:
        return orjson.dumps({**obj, "note": "x" * self.rng.randint(MAX_BYTES - 200, 3 * MAX_BYTES)})

    def empty(self, obj: dict[str, Any]) -> bytes | None:
        return self.rng.choice([None, b"", b" ", b"\n", b"{}", b"null", b"0", b'""', b"[]", b"\x00"])

    def not_utf8(self, obj: dict[str, Any]) -> bytes:
        raw = orjson.dumps(obj)
        if self.rng.random() < 0.5:
            return self.rng.randbytes(self.rng.randint(1, 200))
        name = self.rng.choice(list(obj))
        return raw.replace(b'"' + name.encode() + b'":', b'"' + name.encode() + b'":"\xff\xfe\xc3",', 1)

    def wrong_keys(self, obj: dict[str, Any]) -> bytes:
        d = dict(obj)
        for _ in range(self.rng.randint(1, 3)):
            name = self.rng.choice(list(d))
            value = d.pop(name)
            if self.rng.random() < 0.6:
                d[self.rng.choice([name.upper(), name + " ", "_" + name, name.replace("_", ""), ""])] = value
        return orjson.dumps(d)

    def top_level(self, obj: dict[str, Any]) -> bytes:
        return orjson.dumps(self.rng.choice([[obj], list(obj.values()), "tx", 42, 1.5, True, None]))

    MUTATIONS: tuple[str, ...] = ("flip", "truncate", "swap_type", "raw_literal", "unicode", "nested",
                                  "duplicate_keys", "oversize", "empty", "not_utf8", "wrong_keys", "top_level")

    def mutate(self, obj: dict[str, Any]) -> tuple[str, bytes | None]:
        name = self.rng.choice(self.MUTATIONS)
        mutation: Callable[[dict[str, Any]], bytes | None] = getattr(self, name)
        return name, mutation(obj)

    def mutated(self, obj: dict[str, Any]) -> Message:
        """``obj`` mutated, keyed in any spelling."""
        what, raw = self.mutate(obj)
        return Message(what, raw, self.key(obj))

    def redelivery(self, recent: Sequence[Message], obj: dict[str, Any]) -> Message:
        """One of the ``recent`` valid messages again, with its key or (30 %) another spelling of ``obj``'s."""
        again = self.rng.choice(recent)
        return Message("redelivery", again.value, again.key if self.rng.random() < 0.7 else self.key(obj))


def transaction_messages(mut: Mutator, n: int) -> Iterator[Message]:
    """``n`` transaction messages: 85 % mutated (keys in any spelling), 5 % redeliveries of valid ones
    (their key or another), 3 % late (a month before the others), the rest valid (mostly keyed by card)."""
    rng = mut.rng
    recent: list[Message] = []
    for _ in range(n):
        obj = mut.valid_tx()
        r = rng.random()
        if r < 0.85:
            yield mut.mutated(obj)
        elif r < 0.90 and recent:
            yield mut.redelivery(recent, obj)
        elif r < 0.93:
            yield Message("late", orjson.dumps({**obj, "timestamp": T0 - 30 * 86_400_000}),
                          str(obj["card_id"]).encode())
        else:
            message = Message("valid", orjson.dumps(obj),
                              str(obj["card_id"]).encode() if rng.random() < 0.8 else mut.key(obj))
            recent = (recent + [message])[-50:]
            yield message


def label_messages(mut: Mutator, n: int, scored: Sequence[tuple[str, str]]) -> Iterator[Message]:
    """``n`` label messages, 70 % of them about the (tx_id, card_id) pairs in ``scored`` (read at each
    message: the caller may extend it meanwhile): 80 % mutated, 5 % redeliveries, the rest valid."""
    rng = mut.rng
    recent: list[Message] = []
    for _ in range(n):
        obj = mut.valid_label(scored)
        r = rng.random()
        if r < 0.80:
            yield mut.mutated(obj)
        elif r < 0.85 and recent:
            yield mut.redelivery(recent, obj)
        else:
            message = Message("valid", orjson.dumps(obj),
                              obj["card_id"].encode() if rng.random() < 0.7 else mut.key(obj))
            recent = (recent + [message])[-50:]
            yield message


def pan_pattern(pan: str) -> re.Pattern[bytes]:
    """``pan`` in any spelling (digits, optionally one space or dash between any two), standing alone."""
    return re.compile(rb"(?<![0-9])" + rb"[ -]?".join(d.encode() for d in pan) + rb"(?![0-9])")


_PAN_PATTERNS = {pan: pan_pattern(pan) for pan in PANS}


def _written_ok(chunks: list[bytes], ids: tuple[str, ...] = ()) -> bool:
    """No raw card number (in any spelling) in what would be written. A number glued to more digits (a
    byte flip turned a quote into a digit) is a longer number, not this card number. ``ids``: tx_id /
    merchant_id of a valid event, the producer's ids (only card ids are tokenized): a card number that
    is one of them is not looked for."""
    blob = b"\n".join(chunks)
    return not any(pattern.search(blob) for pattern in _PAN_PATTERNS.values()
                   if not any(pattern.fullmatch(i.encode()) for i in ids))


def fuzz_transactions(n: int, seed: int, pans: PanTokenizer, scorer: Any = None) -> Tally:
    """``n`` transaction messages through the worker's ingress; ``scorer``: also score the valid ones."""
    mut = Mutator(seed)
    rng = mut.rng
    ingress = Ingress(MAX_BYTES, HORIZON_MS, pans, "transactions", 4)
    cards: dict[str, bytes] = {}  # the cards table
    tally = Tally()
    leaks = 0
    batch: list[tuple[bytes | None, bytes | None, str]] = []

    def flush() -> None:
        nonlocal leaks
        states: dict[str, CardState] = {}
        scored_txs, rows = [], []
        for raw, key, topic in batch:
            written: list[bytes] = []
            try:
                out = ingress(raw, key, topic, states,
                              lambda c: None if (s := cards.get(c)) is None else decode_card(s)[0], partition=None)
                tally.outcomes[out.kind] += 1
                if out.kind == "dead_lettered":
                    assert out.error is not None and out.error.reason in DLQ_REASONS
                    tally.reasons[out.error.reason] += 1
                    record = dead_letter_record(raw, out.error, Source(topic, 0, tally.inputs, T0), key, T0, pans)
                    written += [orjson.dumps(record), base64.b64decode(record["original_b64"]),
                                base64.b64decode(record["key_b64"] or "")]
                elif out.kind == "rekeyed":
                    assert out.tx is not None and out.forward is not None
                    written += [out.tx.card_id.encode(), out.forward]
                elif out.kind == "scored":
                    scored_txs.append(out.tx)
                    rows.append(out.row)
            except Exception:  # noqa: BLE001 - a crash is what the fuzzer looks for
                tally.crash(raw)
                continue
            leaks += not _written_ok(written, () if out.tx is None else (out.tx.tx_id, out.tx.merchant_id))
        for card_id, state in states.items():
            cards[card_id] = encode_card(state, None)
        if scorer is not None and scored_txs:
            try:
                for item in scorer.score_many(scored_txs, rows):
                    written = [orjson.dumps(score_record(item, Source("transactions", 0, 0, T0), T0))]
                    if item.is_alert:
                        written.append(orjson.dumps(alert_record(item, scorer.reasons, T0)))
                    leaks += not _written_ok(written, (item.tx.tx_id, item.tx.merchant_id))
            except Exception:  # noqa: BLE001
                tally.crash(b"<scoring batch>")
        batch.clear()

    for message in transaction_messages(mut, n):
        topic = "transactions.by-card" if rng.random() < 0.5 else "transactions"
        batch.append((message.value, message.key, topic))
        tally.inputs += 1
        if len(batch) == 500:
            flush()
    flush()
    tally.outcomes["leaks"] = leaks
    return tally


def fuzz_labels(n: int, seed: int, pans: PanTokenizer) -> Tally:
    """``n`` label messages through the worker's label join against captured vectors."""
    mut = Mutator(seed + 1)
    rng = mut.rng
    captured: dict[bytes, bytes] = {}
    parked: dict[bytes, bytes] = {}
    scored: list[tuple[str, str]] = []
    tally = Tally()
    leaks = 0
    vector = Captured([0.0] * len(MODEL_FEATURES), {"onnx": 0.1, "river": 0.2, "risk": 0.1}, T0)
    messages = label_messages(mut, n, scored)
    for i in range(n):
        if rng.random() < 0.3:  # a transaction was scored meanwhile: its vector is captured, by card
            tx_id, card_id = f"tx-{i:08d}", mut.card()
            try:
                card = parse_label(orjson.dumps({"tx_id": tx_id, "card_id": card_id, "label": "legit",
                                                 "source": "analyst", "label_time": format_ts(T0)}), pans=pans).card_id
            except InvalidEvent:  # a raw card number without a key: never scored
                card = None
            if card is not None:
                capture(capture_key(card, tx_id), vector, captured, parked, pans)
                scored.append((tx_id, card_id))
                del scored[:-1000]
        message = next(messages)
        raw, key = message.value, message.key
        tally.inputs += 1
        written: list[bytes] = []
        try:
            out = join_label(raw, key, ("labels", 0, i), T0, max_bytes=MAX_BYTES, pans=pans,
                             captured=captured, parked=parked, input_topic=rng.choice(["labels", None]))
            tally.outcomes[out.kind] += 1
            if out.kind == "dead_lettered":
                assert out.error is not None and out.error.reason in DLQ_REASONS
                tally.reasons[out.error.reason] += 1
                record = dead_letter_record(raw, out.error, Source("labels", 0, i, T0), key, T0, pans)
                written += [orjson.dumps(record), base64.b64decode(record["original_b64"]),
                            base64.b64decode(record["key_b64"] or "")]
            elif out.kind == "joined":
                assert out.example is not None
                written.append(out.example.to_bytes())
            elif out.kind == "rekeyed":
                assert out.label is not None and out.forward is not None
                written += [out.label.card_id.encode(), out.forward]
            elif out.kind == "parked":
                assert out.label is not None
                value = parked[capture_key(out.label.card_id, out.label.tx_id)]
                p = ParkedLabel.from_bytes(value)
                written += [value, p.raw, p.key or b""]
        except Exception:  # noqa: BLE001
            tally.crash(raw)
            continue
        leaks += not _written_ok(written, () if out.label is None else (out.label.tx_id,))
    tally.outcomes["leaks"] = leaks
    return tally


def _line(name: str, t: Tally) -> str:
    kinds = " ".join(f"{k}={v}" for k, v in sorted(t.outcomes.items()))
    return f"{name}: inputs={t.inputs} {kinds}"


def run(n: int, seed: int = 0, keyed: bool = True, score: bool = True) -> tuple[Tally, Tally]:
    pans = PanTokenizer(FUZZ_KEY) if keyed else PanTokenizer()
    scorer = None
    if score:
        from stream_app.domain.scoring import FraudScorer
        from stream_app.settings import Settings

        scorer = FraudScorer.from_settings(Settings())
    return fuzz_transactions(n, seed, pans, scorer), fuzz_labels(n, seed, pans)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_app.devtools.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="inputs of each kind (transactions, labels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-key", action="store_true", help="run without a PAN key (card numbers: raw_pan)")
    parser.add_argument("--no-score", action="store_true", help="skip scoring the valid transactions")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    txs, labels = run(args.n, args.seed, keyed=not args.no_key, score=not args.no_score)
    seconds = time.perf_counter() - started
    for name, t in (("transactions", txs), ("labels", labels)):
        print(_line(name, t))
        for reason, count in t.reasons.most_common():
            print(f"  {name} dead-lettered {reason}: {count}")
        for crash in t.crashes[:5]:
            print(f"  CRASH {crash}", file=sys.stderr)
    inputs = txs.inputs + labels.inputs
    crashes = len(txs.crashes) + len(labels.crashes)
    leaks = txs.outcomes["leaks"] + labels.outcomes["leaks"]
    accounted = sum(v for t in (txs, labels) for k, v in t.outcomes.items() if k not in {"leaks", "crash"})
    reasons = txs.reasons + labels.reasons
    print(f"RESULT inputs={inputs} crashes={crashes} accounted={accounted} leaks={leaks} "
          f"dead_lettered={sum(reasons.values())} "
          f"by_reason={','.join(f'{k}:{v}' for k, v in sorted(reasons.items()))} seconds={seconds:.1f}")
    return 0 if crashes == 0 and leaks == 0 and accounted == inputs else 1


if __name__ == "__main__":
    sys.exit(main())
