"""The rule engine: documents validated (bad ones refused with every problem named), the batch evaluation equal to
rule-engine's own, the stated precedence, expiry by event time, the holder that keeps the old set on a bad one,
and the scoring core applying the set serving."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
import rule_engine
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.decision import Decision, Policy
from stream_app.domain.entities import MODEL_FEATURES, EntityTable, featurize_model
from stream_app.domain.events import Transaction
from stream_app.domain.records import Source, alert_record, score_record
from stream_app.domain.rules import (
    ACTIONS,
    Batch,
    Hit,
    Published,
    RuleError,
    RuleSet,
    RulesSlot,
    _types,
    decide,
)
from stream_app.domain.scoring import FraudScorer
from stream_app.models.onnx_model import OnnxScorer
from stream_app.models.river_model import RiverScorer

SCHEMAS = Path(__file__).parents[2] / "schemas"
EXAMPLE = Path(__file__).parents[2] / "examples" / "rules.yaml"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def tx(i: int = 0, merchant: str = "m_1", amount: float = 50.0, country: str = "FR", card: str = "card_1",
       ts_ms: int = T0) -> Transaction:
    return Transaction(f"tx-{i}", card, merchant, amount, "EUR", ts_ms, country, "ecom", "5411")


def batch(txs: list[Transaction], decisions: list[Decision] | None = None, risk: float = 0.1) -> Batch:
    matrix = np.zeros((len(txs), len(MODEL_FEATURES)))
    matrix[:, MODEL_FEATURES.index("amount_eur")] = [t.amount_eur for t in txs]
    n = len(txs)
    return Batch(txs, matrix, MODEL_FEATURES, [risk] * n, [risk] * n, [risk] * n,
                 decisions or ["approve"] * n)


def rules(text: str, version: str = "1") -> RuleSet:
    return RuleSet.from_text(text, version, MODEL_FEATURES)


def refused(text: str) -> list[str]:
    with pytest.raises(RuleError) as caught:
        rules(text)
    return caught.value.problems


def test_the_example_file_is_valid() -> None:
    rule_set = rules(EXAMPLE.read_text())
    assert {r.id for r in rule_set.rules} >= {"merchant-blocklist", "trusted-cards", "card-testing-velocity"}
    assert {r.mode for r in rule_set.rules} == {"enforce", "shadow"}


@pytest.mark.parametrize(("text", "expected"), [
    ("rules: [{id: a, when: amout_eur > 1, action: decline}]",
     "unknown field 'amout_eur' (did you mean 'amount_eur'?)"),
    ("rules: [{id: a, when: amount_eur > 'x', action: decline}]", "data type mismatch"),
    ("rules: [{id: a, when: 'amount_eur >', action: decline}]", "syntax error"),
    ("rules: [{id: a, when: amount_eur, action: decline}]", "when must be true or false, not a float"),
    ("rules: [{id: a, when: amount_eur > 1, action: block}]", "action must be one of decline, approve, review"),
    ("rules: [{id: a, when: amount_eur > 1, action: review, mode: dry}]", "mode must be one of enforce, shadow"),
    ("rules: [{id: a, when: amount_eur > 1, action: review, expires: soon}]", "expires is not an RFC 3339 timestamp"),
    ("rules: [{id: a, when: amount_eur > 1, action: review, priority: 1}]", "unknown key 'priority'"),
    ("rules: [{id: A B, when: amount_eur > 1, action: review}]", "id must be 1-64 characters"),
    ("rules: [{id: a, when: x > 1, action: review}, {id: a, when: amount_eur > 1, action: review}]", "used twice"),
    ("rules: [{id: a, when: merchant_id =~ 'm.*', action: review}]", "regular expressions"),
    ("rules: [{id: a, when: card_id in merchant_id, action: review}]", "`in` needs a list"),
    ("lists: {country: [FR]}\nrules: []", "lists.country: the name is a field's"),
    ("lists: {codes: [5411, 5812]}\nrules: []", "must be a list of strings"),
    ("rule: []", "unknown key 'rule'"),
    ("- a", "the document must be a mapping"),
    ("{", "not valid YAML or JSON"),
])
def test_bad_rule_sets_are_refused_with_a_clear_message(text: str, expected: str) -> None:
    problems = refused(text)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once_with_where_it_is() -> None:
    problems = refused("rules: [{id: ok, when: amount_eur > 1, action: review},"
                       " {id: b1, when: amout > 1, action: review}, {id: b2, when: amount_eur > 1, action: nope}]")
    assert len(problems) == 2 and problems[0].startswith("rules[1] (b1)") and problems[1].startswith("rules[2] (b2)")


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["rules", "lists", "id", "when", "action", "mode", "expires", "reason", "x"]),
                        inner, max_size=5), max_leaves=12))
def test_any_document_is_a_rule_set_or_a_rule_error(document: object) -> None:
    try:
        RuleSet.parse(document, "1", MODEL_FEATURES)
    except RuleError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_any_condition_text_is_compiled_or_refused(when: str) -> None:
    try:
        RuleSet.parse({"rules": [{"id": "r", "when": when, "action": "review"}]}, "1", MODEL_FEATURES)
    except RuleError as exc:
        assert exc.problems[0].startswith("rules[0] (r)")


# -- the batch evaluation is rule-engine's answer --------------------------------------------------------------------
NUMERIC = ("amount_eur", "count_1h", "risk")
TEXT = ("merchant_id", "country")
_number = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda x: round(x, 2))
_atom = st.one_of(
    st.tuples(st.sampled_from(NUMERIC), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _number).map(
        lambda t: f"{t[0]} {t[1]} {t[2]!r}"),
    st.tuples(st.sampled_from(TEXT), st.sampled_from(["==", "!="]), st.sampled_from(["m_1", "FR", "DE", "x"])).map(
        lambda t: f"{t[0]} {t[1]} '{t[2]}'"),
    st.sampled_from(TEXT).map(lambda f: f"{f} in blocked"),
    st.sampled_from(TEXT).map(lambda f: f"{f} in ['m_2', 'DE']"),
)
_condition = st.recursive(_atom, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    inner.map(lambda c: f"not ({c})")), max_leaves=6)
_row = st.tuples(st.sampled_from(["m_1", "m_2", "m_3"]), st.sampled_from(["FR", "DE", "IT"]),
                 st.floats(0, 5000, allow_nan=False).map(lambda x: round(x, 2)), st.integers(0, 20),
                 st.floats(0, 1, allow_nan=False).map(lambda x: round(x, 3)))


@settings(max_examples=200, deadline=None)
@given(_condition, st.lists(_row, min_size=1, max_size=8))
def test_batch_evaluation_equals_rule_engine_row_by_row(condition: str, rows: list[tuple]) -> None:
    lists = {"blocked": frozenset({"m_1", "IT"})}
    rule_set = RuleSet.parse({"lists": {"blocked": sorted(lists["blocked"])},
                              "rules": [{"id": "r", "when": condition, "action": "review"}]}, "1", MODEL_FEATURES)
    txs = [tx(i, merchant=m, amount=amount, country=c) for i, (m, c, amount, _, _) in enumerate(rows)]
    b = batch(txs)
    b.matrix[:, MODEL_FEATURES.index("count_1h")] = [r[3] for r in rows]
    b = Batch(b.txs, b.matrix, b.names, [r[4] for r in rows], b.onnx_score, b.river_score, b.model_decisions)
    got = [bool(o.hits) for o in rule_set.evaluate(b)]
    context = rule_engine.Context(type_resolver=rule_engine.type_resolver_from_dict(_types(MODEL_FEATURES, lists)))
    reference = rule_engine.Rule(condition, context=context)
    expected = [reference.matches({"merchant_id": m, "country": c, "amount_eur": amount, "count_1h": float(n),
                                   "risk": risk, "blocked": set(lists["blocked"])}) for m, c, amount, n, risk in rows]
    assert got == expected


# -- precedence, shadow, expiry -------------------------------------------------------------------------------------
def hit(action: Decision, mode: str = "enforce", rule_id: str | None = None) -> Hit:
    return Hit(rule_id or f"{action}-{mode}", action, mode, "why")


@given(st.sampled_from(["approve", "review", "decline"]),
       st.lists(st.tuples(st.sampled_from(ACTIONS), st.sampled_from(["enforce", "shadow"])), max_size=6))
def test_precedence(model: Decision, raw_hits: list[tuple[Decision, str]]) -> None:
    hits = [hit(a, m, f"r{i}") for i, (a, m) in enumerate(raw_hits)]
    decision, decided_by = decide(model, hits)
    enforced = {h.action for h in hits if h.mode == "enforce"}
    if "decline" in enforced:  # a blocklist beats an allowlist
        assert decision == "decline"
    elif "approve" in enforced:  # an allowlist beats the models and review rules
        assert decision == "approve"
    elif "review" in enforced:  # a review rule raises approve, never lowers decline
        assert decision == ("review" if model == "approve" else model)
    else:  # shadow hits change nothing
        assert (decision, decided_by) == (model, None)
    if decided_by is not None:
        assert next(h for h in hits if h.rule_id == decided_by).action == decision


def test_shadow_rules_are_recorded_not_enforced_and_expired_rules_stop_at_event_time() -> None:
    rule_set = rules("""
rules:
  - {id: shadow-big, when: amount_eur > 100, action: decline, mode: shadow}
  - {id: old-block, when: merchant_id == 'm_1', action: decline, expires: '2026-01-01T01:00:00Z'}
""")
    before, after = tx(1, amount=500), tx(2, amount=500, ts_ms=T0 + 3_600_000)
    first, second = rule_set.evaluate(batch([before, after]))
    assert first.decision == "decline" and first.decided_by == "old-block"
    assert [h.rule_id for h in first.hits] == ["shadow-big", "old-block"]
    assert second.decision == "approve" and second.decided_by is None
    assert [(h.rule_id, h.mode) for h in second.hits] == [("shadow-big", "shadow")]
    assert rule_set.enforcing_all().evaluate(batch([after]))[0].decided_by == "shadow-big"


def test_entity_features_and_scores_are_readable() -> None:
    rule_set = rules("rules: [{id: hot, when: merchant_fraud_share_7d > 0.5 and risk > 0.2, action: review}]")
    b = batch([tx(1), tx(2)], risk=0.3)
    b.matrix[0, MODEL_FEATURES.index("merchant_fraud_share_7d")] = 0.9
    assert [o.decided_by for o in rule_set.evaluate(b)] == ["hot", None]


# -- the holder: a bad set leaves the old one serving ---------------------------------------------------------------
def test_the_slot_keeps_the_old_set_when_a_new_one_is_refused() -> None:
    slot = RulesSlot()
    good = Published(1, {"rules": [{"id": "a", "when": "amount_eur > 1", "action": "review"}]}, "ana", T0)
    assert slot.apply(good.to_bytes(), MODEL_FEATURES, T0).ok and slot.current is not None
    bad = Published(2, {"rules": [{"id": "a", "when": "amout_eur > 1", "action": "review"}]}, "bob", T0)
    change = slot.apply(bad.to_bytes(), MODEL_FEATURES, T0 + 1)
    assert not change.ok and change.version == "2" and change.published_by == "bob" and "amout_eur" in str(change.error)
    assert slot.current.version == "1"
    assert not slot.apply(b"not json", MODEL_FEATURES, T0 + 2).ok and slot.current.version == "1"
    assert [c.ok for c in slot.history] == [True, False, False]


# -- the scoring core applies it, and the records carry it ----------------------------------------------------------
def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()),
                                           format_checker=jsonschema.FormatChecker())


def test_the_scorer_applies_the_rule_set_serving_and_records_say_so() -> None:
    scorer = FraudScorer(OnnxScorer.load(), RiverScorer(), Policy())
    t = tx(1, merchant="m_blocked")
    row = featurize_model({}, EntityTable(), t, 7 * 86_400_000)
    plain = scorer.score_many([t], [row])[0]
    assert plain.rules is None and "rules" not in score_record(plain, Source("t", 0, 0, T0), T0)
    scorer.rules = RulesSlot(rules("rules: [{id: block, when: merchant_id == 'm_blocked', action: decline}]"))
    ruled = scorer.score_many([t], [row])[0]
    assert ruled.decision == "decline" and ruled.is_alert and ruled.rules is not None
    assert ruled.rules.model_decision == plain.decision and ruled.risk == plain.risk
    record = orjson.loads(orjson.dumps(score_record(ruled, Source("t", 0, 0, T0), T0)))
    validator("score").validate(record)
    assert record["rules"] == {"version": "1", "model_decision": plain.decision, "decided_by": "block",
                               "hits": [{"id": "block", "action": "decline", "mode": "enforce", "reason": "block"}]}
    alert = orjson.loads(orjson.dumps(alert_record(ruled, scorer.reasons, T0)))
    validator("alert").validate(alert)
    assert alert["rules"]["decided_by"] == "block"

