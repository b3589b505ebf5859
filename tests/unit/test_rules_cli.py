"""`stream-app rules validate` and `backtest` (publish is tested on the real broker: test_rules_hot_update.py)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from stream_app.cli import main
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.entities import MODEL_FEATURES
from stream_app.domain.rules import RuleSet
from stream_app.offline.rules import changes

EXAMPLE = Path(__file__).parents[2] / "examples" / "rules.yaml"


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("STREAM_APP_DATA_DIR", str(tmp_path / "data"))  # no checkpoint: a fresh River model


def test_validate_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate", str(EXAMPLE)]) == 0
    assert re.search(r"valid, 6 rules \(5 enforced, 1 shadow\), 3 lists, sha256 [0-9a-f]{64}", capsys.readouterr().out)


def test_validate_refuses_a_bad_file_naming_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: a, when: amout_eur > 1, action: decline}\n"
                   "  - {id: b, when: 'x >', action: nope}\n")
    assert main(["rules", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "refused, 3 problem(s)" in err and "did you mean 'amount_eur'" in err and "action must be one of" in err
    assert main(["rules", "validate", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_backtest_on_generated_history_prints_the_per_rule_table(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    items = list(simulate(GeneratorConfig(seed=5, n_customers=300), days=12))
    fraud_merchant = max({i.tx.merchant_id for i in items if i.is_fraud},
                         key=lambda m: sum(i.is_fraud for i in items if i.tx.merchant_id == m))
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(f"""
lists: {{blocked: [{fraud_merchant}]}}
rules:
  - {{id: block, when: merchant_id in blocked, action: decline}}
  - {{id: allow-all-small, when: amount_eur < 1, action: approve}}
  - {{id: never, when: amount_eur < 0, action: review, mode: shadow}}
""")
    assert main(["rules", "backtest", str(rules_file), "--days", "12", "--customers", "300", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert lines["rule"][:4] == ["rule", "action", "mode", "hits"]
    block = lines["block"]
    expected_hits = sum(i.tx.merchant_id == fraud_merchant for i in items)
    assert block[1:3] == ["decline", "enforce"] and int(block[3]) == expected_hits and int(block[5]) > 0
    assert lines["never"][1:4] == ["review", "shadow", "0"]
    assert "warning: declined transactions rarely get chargebacks" in out
    assert "labels are not mature yet" in out  # the last 7 days' labels arrive after the history's end
    result = re.search(r"^RESULT rules=3 scored=(\d+) labeled=(\d+) alerts_before=(\d+) alerts_after=(\d+) "
                       r"added=(\d+) removed=(\d+)$", out, re.M)
    assert result is not None
    scored, labeled, before, after, added, removed = map(int, result.groups())
    assert scored == len(items) and 0 < labeled < scored and after - before == added - removed


def test_backtest_of_a_history_file_reads_its_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = list(simulate(GeneratorConfig(seed=3, n_customers=150), days=10))
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(orjson.dumps({**i.tx.to_json_dict(), "is_fraud": i.is_fraud}) for i in items))
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules: [{id: all-ecom, when: channel == 'ecom', action: review}]\n")
    assert main(["rules", "backtest", str(rules_file), "--input", str(history), "--label-maturity-days", "0"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("all-ecom"))
    ecom = [i for i in items if i.tx.channel == "ecom"]
    assert int(row[3]) == len(ecom)
    assert row[4] == f"{sum(i.is_fraud for i in ecom) / len(ecom):.3f}"  # every label is mature with a 0-day window
    assert "not mature" not in out and "chargebacks" not in out


def test_changes_name_what_a_new_version_adds_removes_and_changes() -> None:
    old = RuleSet.parse({"lists": {"blocked": ["m_1", "m_2"]}, "rules": [
        {"id": "a", "when": "amount_eur > 1", "action": "review"},
        {"id": "b", "when": "amount_eur > 2", "action": "review"}]}, "1", MODEL_FEATURES)
    new = RuleSet.parse({"lists": {"blocked": ["m_2", "m_3"]}, "rules": [
        {"id": "a", "when": "amount_eur > 1", "action": "review"},
        {"id": "b", "when": "amount_eur > 3", "action": "review"},
        {"id": "c", "when": "amount_eur > 4", "action": "decline"}]}, "2", MODEL_FEATURES)
    assert changes(old, new) == {"rules_added": ["c"], "rules_removed": [], "rules_changed": ["b"],
                                 "lists": {"blocked": {"added": ["m_3"], "removed": ["m_1"]}}}
    assert changes(None, new)["rules_added"] == ["a", "b", "c"]
