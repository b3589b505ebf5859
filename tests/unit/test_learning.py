"""Labels, joined examples, the online learner, prequential quality and checkpoints."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.entities import MODEL_FEATURES, N_MODEL_FEATURES, EntityTable, featurize_model
from stream_app.domain.events import InvalidEvent, parse_label
from stream_app.domain.learning import Captured, Example, Learned, OnlineLearner, PrequentialMetrics, read_captured
from stream_app.domain.records import Source, score_record
from stream_app.domain.scoring import Scored
from stream_app.models import checkpoint
from stream_app.models.river_model import RiverScorer
from stream_app.models.stacker import Stacker

LABEL = {"tx_id": "tx-1", "card_id": "card_1", "label": "fraud", "source": "chargeback",
         "label_time": "2026-01-02T00:00:00Z"}


def test_label_parses() -> None:
    label = parse_label(orjson.dumps(LABEL))
    assert (label.tx_id, label.is_fraud, label.source) == ("tx-1", True, "chargeback")


@pytest.mark.parametrize(("change", "reason"), [
    ({"label": "maybe"}, "invalid_value"), ({"label": 1}, "wrong_type"), ({"source": "psychic"}, "invalid_value"),
    ({"tx_id": None}, "missing_field"), ({"label_time": "later"}, "invalid_value"),
])
def test_bad_labels_have_reasons(change: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_label(orjson.dumps({**LABEL, **change}))
    assert info.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_label_bytes_only_raise_invalid_event(raw: bytes) -> None:
    try:
        parse_label(raw)
    except InvalidEvent as exc:
        assert exc.reason


def test_captured_and_example_round_trip() -> None:
    """The label join learns from exactly what the score record published: same vector, same rounding."""
    tx = next(iter(simulate(GeneratorConfig(seed=5, n_customers=10)))).tx
    features = [float(i) + 0.1234567891 for i in range(N_MODEL_FEATURES)]
    scored = Scored(tx, features, 0.91234567891, 0.2, 0.70000049, "review", {"onnx": "o", "river": "r"})
    captured = Captured.from_scored(scored, 123)
    assert Captured.from_bytes(captured.to_bytes()) == captured
    record = orjson.loads(orjson.dumps(score_record(scored, Source("t", 0, 1, 2), 3)))
    assert captured.scores == {**record["scores"], "risk": record["risk_score"]} == {
        "onnx": 0.912346, "river": 0.2, "risk": 0.7}
    assert captured.features == [record["features"][n] for n in MODEL_FEATURES]
    assert captured.entity is None
    example = Example("tx-1", captured.features, True, captured.scores, "analyst", 5)
    assert Example.from_bytes(example.to_bytes()) == example
    assert b"entity" not in example.to_bytes(), "without entity ids: the v1 record, byte for byte"


ENTITY = {"card": "card_1", "ts": 1_767_225_600_000, "keys": {"merchant": "m_1"}}


def test_captured_v1_entries_still_decode_and_v2_round_trips_with_its_entity() -> None:
    """Entries a worker captured before entity profiles are 3-element lists: they still join, with no entity."""
    v1 = orjson.dumps([[1.5, 2.0], {"onnx": 0.9, "river": 0.1, "risk": 0.8}, 7])
    old = Captured.from_bytes(v1)
    assert old == Captured([1.5, 2.0], {"onnx": 0.9, "river": 0.1, "risk": 0.8}, 7, None)
    assert old.to_bytes() == v1

    tx = next(iter(simulate(GeneratorConfig(seed=5, n_customers=10)))).tx
    scored = Scored(tx, [0.5] * N_MODEL_FEATURES, 0.9, 0.2, 0.7, "review", {"onnx": "o", "river": "r"})
    captured = Captured.from_scored(scored, 123, {"merchant": tx.merchant_id})
    assert captured.entity == {"card": tx.card_id, "ts": tx.ts_ms, "keys": {"merchant": tx.merchant_id}}
    assert len(orjson.loads(captured.to_bytes())) == 4
    assert Captured.from_bytes(captured.to_bytes()) == captured


def test_example_round_trips_its_entity_and_refuses_one_that_is_not_an_object() -> None:
    entity = {**ENTITY, "suspects": ["m_0", "m_2"]}
    example = Example("tx-1", [1.0, 2.0], True, {"onnx": 0.5}, "chargeback", 9, entity)
    assert Example.from_bytes(example.to_bytes()) == example
    record = orjson.loads(example.to_bytes())
    assert record["entity"] == entity
    for bad in (["card_1"], "card_1", 3, True):
        with pytest.raises(TypeError, match="entity"):
            Example.from_bytes(orjson.dumps({**record, "entity": bad}))
    assert Example.from_bytes(orjson.dumps({**record, "entity": None})).entity is None


def test_prequential_metrics_score_before_learning() -> None:
    m = PrequentialMetrics(window=4, threshold=0.5)
    for y, s in [(False, 0.1), (True, 0.9), (False, 0.6), (True, 0.4), (False, 0.2)]:
        m.update(y, {"onnx": s})
    snap = m.snapshot()["onnx"]
    assert snap["labels"] == 4  # window
    assert snap["roc_auc"] == pytest.approx(0.75)
    assert snap["precision_at_threshold"] == 0.5 and snap["recall_at_threshold"] == 0.5


def test_a_model_that_appears_later_is_aligned() -> None:
    m = PrequentialMetrics(window=10)
    m.update(True, {"onnx": 0.9})
    m.update(False, {"onnx": 0.1, "challenger": 0.2})
    assert m.snapshot()["challenger"]["labels"] == 1 and math.isnan(m.snapshot()["challenger"]["roc_auc"])


def _examples(n: int) -> list[Example]:
    states: dict = {}
    table = EntityTable()
    items = list(simulate(GeneratorConfig(seed=5, n_customers=300, fraud_rate=0.05), days=8))[:n]
    return [Example(i.tx.tx_id, featurize_model(states, table, i.tx, 7 * 86_400_000), i.is_fraud,
                    {"onnx": 0.5, "river": 0.5}, "analyst", 0) for i in items]


def test_learners_fed_the_same_log_are_identical_and_replays_are_ignored() -> None:
    examples = _examples(600)
    a = OnlineLearner(RiverScorer(), Stacker(10), PrequentialMetrics())
    b = OnlineLearner(RiverScorer(), Stacker(10), PrequentialMetrics())
    for offset, ex in enumerate(examples):
        a.apply(ex, offset)
        b.apply(ex, offset)
    for offset, ex in enumerate(examples[:100]):  # redelivered part of the log
        b.apply(ex, offset)
    assert a.river.n_learned == b.river.n_learned == 600 and a.offset == 599
    probe = [ex.features for ex in examples[:20]]
    assert a.river.predict_proba_many(probe) == b.river.predict_proba_many(probe)


def test_frozen_learner_measures_but_does_not_learn() -> None:
    frozen = OnlineLearner(RiverScorer(), Stacker(10), PrequentialMetrics(), learning=False)
    for offset, ex in enumerate(_examples(50)):
        frozen.apply(ex, offset)
    assert frozen.river.n_learned == 0 and frozen.metrics.snapshot()["onnx"]["labels"] == 50


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    river = RiverScorer()
    for ex in _examples(200):
        river.learn_one(ex.features, ex.is_fraud)
    probe = [ex.features for ex in _examples(20)]
    path = checkpoint.save(tmp_path, river.version, 199, (river, Stacker()), b"secret")
    restored = checkpoint.load(path, b"secret")
    assert restored.version == river.version and restored.offset == 199
    assert restored.state[0].predict_proba_many(probe) == river.predict_proba_many(probe)

    with pytest.raises(checkpoint.CheckpointRejected):
        checkpoint.load(path, b"another key")
    tampered = tmp_path / "river-999999999999.ckpt"
    head, _, payload = path.read_bytes().partition(b"\n")
    evil = pickle.dumps("not what we wrote")
    tampered.write_bytes(head + b"\n" + evil)
    with pytest.raises(checkpoint.CheckpointRejected):
        checkpoint.load(tampered, b"secret")
    best, refused = checkpoint.latest(tmp_path, b"secret")
    assert best is not None and best.offset == 199 and len(refused) == 1


def test_checkpoints_keep_only_the_newest(tmp_path: Path) -> None:
    for offset in range(5):
        checkpoint.save(tmp_path, f"v{offset}", offset, {"n": offset}, None, keep=3)
    assert len(list(tmp_path.glob("river-*.ckpt"))) == 3
    assert checkpoint.latest(tmp_path, None)[0].state == {"n": 4}  # type: ignore[union-attr]


def test_stacker_learns_to_trust_the_better_score() -> None:
    stacker = Stacker(warmup=100)
    examples = _examples(1500)
    assert not stacker.ready
    for ex in examples[:1000]:  # onnx is informative here, river is noise
        stacker.learn_one(ex.features, {"onnx": 0.9 if ex.is_fraud else 0.1, "river": 0.5}, ex.is_fraud)
    assert stacker.ready and stacker.version.endswith("@1000")
    high = stacker.predict_proba_one(examples[0].features, 0.9, 0.5)
    low = stacker.predict_proba_one(examples[0].features, 0.1, 0.5)
    assert high > low + 0.3


def test_label_join_in_the_cards_partition_whichever_comes_first() -> None:
    """Scoring captures the vector under (card, tx_id); a label joins it, or waits for it (parked) and is
    joined by the capture; a second label is a duplicate; a label keyed by something else than its card,
    read from the input topic, is re-keyed (its card's partition may be another worker's)."""
    from stream_app.domain.ingress import capture, capture_key, card_of, join_label
    from stream_app.domain.pan import PanTokenizer

    pans = PanTokenizer()
    vector = Captured([1.0] * N_MODEL_FEATURES, {"onnx": 0.9, "river": 0.1, "risk": 0.8}, 5, ENTITY)
    captured: dict[bytes, bytes] = {}
    parked: dict[bytes, bytes] = {}

    def label(tx_id: str, key: bytes | None = b"card_1", topic: str = "labels.by-card"):  # type: ignore[no-untyped-def]
        return join_label(orjson.dumps({**LABEL, "tx_id": tx_id}), key, (topic, 0, 1), 10, max_bytes=4096,
                          pans=pans, captured=captured, parked=parked, input_topic="labels")

    key = capture_key("card_1", "tx-1")
    assert card_of(key) == b"card_1"
    assert capture(key, vector, captured, parked, pans) is None and key in captured
    joined = label("tx-1")
    assert joined.kind == "joined" and joined.example.features == vector.features
    assert joined.example.entity == ENTITY, "the entity ids travel with the example"
    assert label("tx-1").kind == "duplicate"
    assert capture(key, vector, captured, parked, pans) is None and isinstance(read_captured(captured[key]), Learned), \
        "learned stays learned"

    assert label("tx-2").kind == "parked" and capture_key("card_1", "tx-2") in parked
    late = capture(capture_key("card_1", "tx-2"), vector, captured, parked, pans)
    assert late is not None and late.tx_id == "tx-2" and late.is_fraud and not parked
    assert label("tx-2").kind == "duplicate"

    assert label("tx-3", key=b"tx-3", topic="labels").kind == "rekeyed"
    assert label("tx-3", key=b"card_1", topic="labels").kind == "parked", "keyed by its card: joined here"


@pytest.mark.parametrize("features", [b"[1.0,null]", b"[1.0,1e999]", b"[true,1.0]", b'"1,2"', b'[1.0,"2"]'])
def test_an_example_with_a_feature_that_is_not_a_finite_number_is_unreadable(features: bytes) -> None:
    """The learner skips such a record (logged) instead of crashing: found by the end-to-end fuzzer,
    when an infinite feature was written to the examples log as null."""
    good = Example("t1", [1.0, 2.0], True, {"onnx": 0.5}, "chargeback", 1).to_bytes()
    assert Example.from_bytes(good).features == [1.0, 2.0]
    with pytest.raises(ValueError):
        Example.from_bytes(good.replace(b"[1.0,2.0]", features))


def test_a_later_label_with_precedence_corrects_the_learned_verdict() -> None:
    """An analyst says legit, the chargeback says fraud: the chargeback is learned again on the captured vector
    (outcome corrected); a customer's claim cannot overrule the analyst (overruled); the same verdict again is a
    duplicate; an analyst may revise another analyst's verdict. Past the retention only the marker is left,
    and a later label is a duplicate. A parked label is replaced, before its transaction is scored, by one
    that would correct it."""
    from stream_app.domain.ingress import capture, capture_key, join_label
    from stream_app.domain.learning import LEARNED
    from stream_app.domain.pan import PanTokenizer

    pans = PanTokenizer()
    vector = Captured([1.0] * N_MODEL_FEATURES, {"onnx": 0.9, "river": 0.1, "risk": 0.8}, 5, ENTITY)
    captured: dict[bytes, bytes] = {}
    parked: dict[bytes, bytes] = {}

    def label(verdict: str, source: str, tx_id: str = "tx-1", analyst: str | None = None):  # type: ignore[no-untyped-def]
        body = {**LABEL, "tx_id": tx_id, "label": verdict, "source": source}
        return join_label(orjson.dumps(body if analyst is None else {**body, "analyst": analyst}), b"card_1",
                          ("labels", 0, 1), 10, max_bytes=4096, pans=pans, captured=captured, parked=parked,
                          input_topic="labels")

    key = capture_key("card_1", "tx-1")
    capture(key, vector, captured, parked, pans)
    first = label("legit", "analyst", analyst="alice@bank.example")
    assert first.kind == "joined" and not first.example.is_fraud and first.example.analyst == "alice@bank.example"
    assert Example.from_bytes(first.example.to_bytes()) == first.example, "the examples log says who taught it"
    assert label("legit", "chargeback").kind == "duplicate"
    assert label("fraud", "customer").kind == "overruled"
    corrected = label("fraud", "chargeback")
    assert corrected.kind == "corrected" and corrected.example.is_fraud and corrected.example.source == "chargeback"
    assert corrected.example.features == vector.features and corrected.example.entity == ENTITY
    assert label("legit", "analyst").kind == "overruled", "an analyst does not overrule the chargeback"
    assert read_captured(captured[key]) == Learned(vector, True, "chargeback")
    assert Captured.from_bytes(captured[key]) == vector, "a worker before corrections reads it as a capture"

    captured[key] = LEARNED  # what the retention sweep leaves
    assert label("legit", "chargeback").kind == "duplicate"

    assert label("fraud", "analyst", tx_id="tx-2", analyst="bob").kind == "parked"
    assert label("fraud", "chargeback", tx_id="tx-2").kind == "duplicate"
    assert label("legit", "customer", tx_id="tx-2").kind == "overruled"
    assert label("legit", "analyst", tx_id="tx-2", analyst="carol").kind == "parked", "a revision waits instead"
    late = capture(capture_key("card_1", "tx-2"), vector, captured, parked, pans)
    assert late is not None and not late.is_fraud and late.source == "analyst"


def test_analyst_identity_is_validated() -> None:
    good = parse_label(orjson.dumps({**LABEL, "source": "analyst", "analyst": "a.b@x-y.example"}))
    assert good.analyst == "a.b@x-y.example" and b'"analyst":"a.b@x-y.example"' in good.to_bytes()
    assert parse_label(orjson.dumps(LABEL)).analyst is None
    with pytest.raises(InvalidEvent):
        parse_label(orjson.dumps({**LABEL, "analyst": "<b>x</b>"}))
