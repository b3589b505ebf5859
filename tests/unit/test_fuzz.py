"""Fuzzing the worker's ingress decoder and label join (CI size; full size: ``python -m stream_app.devtools.fuzz``).

Every generated input must end as exactly one outcome (scored / re-keyed / duplicate / dead-lettered
with a reason; joined / parked / duplicate / dead-lettered for labels), no exception may escape, and
the dead-letter record of a bad input must be buildable and serialisable."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.devtools import fuzz
from stream_app.domain.events import NO_PAN_KEY, parse_label
from stream_app.domain.features import FEATURE_NAMES
from stream_app.domain.ingress import Ingress, capture_key, join_label
from stream_app.domain.learning import Captured, Learned, read_captured
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.records import Source, dead_letter_record
from stream_app.domain.schemas import DLQ_REASONS

PANS = PanTokenizer(fuzz.FUZZ_KEY)
INGRESS = Ingress(fuzz.MAX_BYTES, fuzz.HORIZON_MS, PANS, "transactions", 4)
SOURCE = Source("transactions", 0, 0, fuzz.T0)
FUZZ = settings(max_examples=600, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
VALID_TX = {"tx_id": "tx-1", "card_id": fuzz.PANS[0], "merchant_id": "m_1", "amount": 12.5, "currency": "EUR",
            "timestamp": "2026-01-01T10:00:00Z", "country": "FR", "channel": "pos", "mcc": "5411"}
VALID_LABEL = {"tx_id": "tx-1", "card_id": fuzz.PANS[1], "label": "fraud", "source": "analyst",
               "label_time": "2026-01-02T10:00:00Z"}


def _dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # integers beyond 64 bits: orjson refuses to write them; a producer might
        return str(obj).encode()


def mutated(valid: dict[str, Any]) -> st.SearchStrategy[bytes | None]:
    """A field replaced by any JSON value, fields dropped, or the bytes cut and flipped."""
    def replace(field_value: tuple[str, Any]) -> bytes:
        return _dumps({**valid, field_value[0]: field_value[1]})

    def flip(args: tuple[int, int, int]) -> bytes:
        raw = bytearray(orjson.dumps(valid))
        pos, byte, cut = args
        raw[pos % len(raw)] = byte
        return bytes(raw[: max(1, cut % (len(raw) + 1))])

    return st.one_of(
        st.tuples(st.sampled_from(sorted(valid)), json_values).map(replace),
        st.sets(st.sampled_from(sorted(valid))).map(lambda drop: _dumps({k: v for k, v in valid.items()
                                                                          if k not in drop})),
        st.tuples(st.integers(0, 10**4), st.integers(0, 255), st.integers(0, 10**4)).map(flip),
        json_values.map(_dumps),
        st.binary(max_size=300),
        st.none(),
    )


def _account(raw: bytes | None, key: bytes | None, outcome: Any, pans: PanTokenizer) -> None:
    if outcome.kind == "dead_lettered":
        assert outcome.error.reason in DLQ_REASONS
        record = orjson.loads(orjson.dumps(dead_letter_record(raw, outcome.error, SOURCE, key, 1, pans)))
        for pan in fuzz.PANS:
            assert pan.encode() not in base64.b64decode(record["original_b64"])


@FUZZ
@given(mutated(VALID_TX), st.one_of(st.none(), st.binary(max_size=20)), st.sampled_from(["transactions", "x"]))
def test_ingress_accounts_for_every_input(raw: bytes | None, key: bytes | None, topic: str) -> None:
    for pans in (PANS, NO_PAN_KEY):
        out = Ingress(fuzz.MAX_BYTES, fuzz.HORIZON_MS, pans, "transactions", 4)(raw, key, topic, {}, lambda _c: None,
                                                                                 partition=None)
        assert out.kind in {"scored", "rekeyed", "duplicate", "dead_lettered"}
        assert (out.error is not None) == (out.kind == "dead_lettered")
        _account(raw, key, out, pans)


@FUZZ
@given(mutated(VALID_LABEL), st.booleans(), st.booleans())
def test_label_join_accounts_for_every_input(raw: bytes | None, was_scored: bool, was_parked: bool) -> None:
    vector = Captured([0.0] * len(FEATURE_NAMES), {"onnx": 0.1}, 1).to_bytes()
    card = parse_label(orjson.dumps(VALID_LABEL), pans=PANS).card_id
    captured = {capture_key(card, "tx-1"): vector} if was_scored else {}
    parked: dict[bytes, bytes] = {}
    if was_parked and not was_scored:
        join_label(orjson.dumps(VALID_LABEL), None, ("labels", 0, 0), 1, max_bytes=fuzz.MAX_BYTES, pans=PANS,
                   captured=captured, parked=parked)
    out = join_label(raw, b"k", ("labels", 0, 1), 2, max_bytes=fuzz.MAX_BYTES, pans=PANS, captured=captured,
                     parked=parked)
    assert out.kind in {"joined", "parked", "duplicate", "overruled", "dead_lettered"}  # corrected: after a join only
    if out.kind == "joined":
        assert out.example is not None and isinstance(
            read_captured(captured[capture_key(out.label.card_id, out.label.tx_id)]), Learned)
    if out.kind == "parked":
        assert capture_key(out.label.card_id, out.label.tx_id) in parked
    _account(raw, b"k", out, PANS)
    rekeyed = join_label(raw, b"k", ("labels", 0, 1), 2, max_bytes=fuzz.MAX_BYTES, pans=PANS, captured={},
                         parked={}, input_topic="labels")
    assert (rekeyed.kind == "dead_lettered") == (out.kind == "dead_lettered")
    if rekeyed.kind == "rekeyed":  # keyed by something else than its card: forwarded, no card number in it
        assert rekeyed.forward is not None and not any(pan.encode() in rekeyed.forward for pan in fuzz.PANS)
    _account(raw, b"k", rekeyed, PANS)


def test_generated_bad_inputs_are_all_accounted_for() -> None:
    """The full-size command's generator and accounting, at CI size, with and without a PAN key."""
    for keyed, score in ((True, True), (False, False)):
        txs, labels = fuzz.run(1500, seed=3, keyed=keyed, score=score)
        for t in (txs, labels):
            assert t.crashes == [] and t.outcomes["leaks"] == 0
            assert sum(v for k, v in t.outcomes.items() if k != "leaks") == t.inputs == 1500
            assert sum(t.reasons.values()) == t.outcomes["dead_lettered"] > t.inputs // 2
        assert txs.outcomes["scored"] and txs.outcomes["rekeyed"] and txs.outcomes["duplicate"]
        assert labels.outcomes["joined"] and labels.outcomes["parked"] and labels.outcomes["duplicate"]
        assert ("raw_pan" in txs.reasons) == (not keyed)


def test_command_prints_a_result_line(capsys: Any) -> None:
    assert fuzz.main(["--n", "300", "--no-score"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT inputs=600 crashes=0 accounted=600 leaks=0 dead_lettered=")
