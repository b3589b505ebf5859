"""`stream-app rules`: validate a rule-set file, and backtest it on history through the scoring core.

A backtest replays history exactly as `stream-app batch` does (:func:`stream_app.offline.batch.replay`), with the
file's rule set in the scorer, so every transaction carries both the models' decision and the final one
(:class:`~stream_app.domain.rules.RuleOutcome`). What each rule changed is read from ``decided_by``: an alert
*added* by a rule is a transaction the models approved and the rule decided review or decline; one *removed*, a
transaction the models alerted on and an allowlist approved. Precision counts only transactions whose label is
known (mature) by the end of the history. Shadow rules change nothing unless ``as_enforced``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_app.domain.features import DAY_MS
from stream_app.domain.rules import RuleSet
from stream_app.domain.scoring import Scored
from stream_app.offline.training import parse_label_value


def load_rule_file(path: Path, feature_names: tuple[str, ...], version: str | None = None) -> RuleSet:
    """A rule-set file (YAML or JSON) validated and compiled; raises RuleError (or OSError for the file).
    Without ``version`` the file's version is ``file:`` and its digest's first 12 characters."""
    rule_set = RuleSet.from_text(path.read_bytes(), version or "file", feature_names)
    return rule_set if version else RuleSet(f"file:{rule_set.sha256[:12]}", rule_set.rules, rule_set.lists,
                                            rule_set.sha256, rule_set.description)


@dataclass(frozen=True, slots=True)
class Label:
    is_fraud: bool
    known_at_ms: int | None  # when the label became known; None: unknown, judged by the maturity window


@dataclass(slots=True)
class RuleLine:
    """One rule's row of the backtest table."""

    rule_id: str
    action: str
    mode: str
    hits: int = 0
    hits_labeled: int = 0
    hits_fraud: int = 0
    added: int = 0
    added_labeled: int = 0
    added_fraud: int = 0
    removed: int = 0
    removed_labeled: int = 0
    removed_fraud: int = 0

    @staticmethod
    def share(part: int, whole: int) -> str:
        return f"{part / whole:.3f}" if whole else "-"


@dataclass(slots=True)
class Report:
    version: str
    lines: dict[str, RuleLine]
    scored: int = 0
    labeled: int = 0
    immature: int = 0
    alerts_before: int = 0
    alerts_after: int = 0
    before_labeled: int = 0
    before_fraud: int = 0
    after_labeled: int = 0
    after_fraud: int = 0
    declines_hit: int = 0
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = ("rule", "action", "mode", "hits", "hit_precision", "alerts_added", "added_precision",
                "alerts_removed", "removed_fraud_share")
        rows = [head] + [(x.rule_id, x.action, x.mode, str(x.hits), x.share(x.hits_fraud, x.hits_labeled),
                          str(x.added), x.share(x.added_fraud, x.added_labeled), str(x.removed),
                          x.share(x.removed_fraud, x.removed_labeled)) for x in self.lines.values()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    def totals(self) -> str:
        share = RuleLine.share
        return (f"alerts: {self.alerts_before} -> {self.alerts_after} of {self.scored} scored; precision "
                f"{share(self.before_fraud, self.before_labeled)} -> {share(self.after_fraud, self.after_labeled)} "
                f"(on {self.labeled} transactions with a mature label)")

    def summary(self) -> str:
        return (f"RESULT rules={len(self.lines)} scored={self.scored} labeled={self.labeled} "
                f"alerts_before={self.alerts_before} alerts_after={self.alerts_after} "
                f"added={sum(x.added for x in self.lines.values())} "
                f"removed={sum(x.removed for x in self.lines.values())}")


def backtest(rule_set: RuleSet, scored: Iterable[Scored], labels: Mapping[str, Label], maturity_days: float
             ) -> Report:
    """Count, per rule, its hits and the alerts it added or removed, with precision on mature labels.

    A label is mature when it was known by the history's last event time (``known_at_ms``), or, when that is
    not known, when its transaction is older than ``maturity_days`` before the last event time."""
    report = Report(rule_set.version, {r.id: RuleLine(r.id, r.action, r.mode) for r in rule_set.rules})
    items = list(scored)
    end_ms = max((s.tx.ts_ms for s in items), default=0)
    window_ms = int(maturity_days * DAY_MS)
    for s in items:
        outcome = s.rules
        assert outcome is not None, "backtest scores with a rule set"
        label = labels.get(s.tx.tx_id)
        mature = label is not None and (label.known_at_ms <= end_ms if label.known_at_ms is not None
                                        else s.tx.ts_ms <= end_ms - window_ms)
        fraud = bool(label and label.is_fraud)
        before, after = outcome.model_decision != "approve", outcome.decision != "approve"
        report.scored += 1
        report.labeled += mature
        report.immature += label is not None and not mature
        report.alerts_before += before
        report.alerts_after += after
        if mature:
            report.before_labeled += before
            report.before_fraud += before and fraud
            report.after_labeled += after
            report.after_fraud += after and fraud
        for hit in outcome.hits:
            line = report.lines[hit.rule_id]
            line.hits += 1
            line.hits_labeled += mature
            line.hits_fraud += mature and fraud
            report.declines_hit += hit.action == "decline"
        if outcome.decided_by is not None and before != after:
            line = report.lines[outcome.decided_by]
            if after:
                line.added += 1
                line.added_labeled += mature
                line.added_fraud += mature and fraud
            else:
                line.removed += 1
                line.removed_labeled += mature
                line.removed_fraud += mature and fraud
    report.warnings.extend(_warnings(report, len(labels), maturity_days))
    return report


def _warnings(report: Report, n_labels: int, maturity_days: float) -> list[str]:
    out = []
    if n_labels == 0:
        out.append("no labels in this history: no precision can be measured (a file needs an is_fraud column)")
    elif report.immature:
        out.append(f"{report.immature} labels are not mature yet (known after the history's end, or within "
                   f"{maturity_days:g} days of it): those transactions count in hits and alerts but not in precision")
    if report.declines_hit:
        out.append("declined transactions rarely get chargebacks: a declined payment never happened, so history "
                   "labels it legit (or not at all) more often than it deserves; read the precision of a decline "
                   "rule on transactions that were declined as a lower bound")
    return out


def labels_of(raw: Any, column: str) -> bool | None:
    """The label of a history row (a dict, or JSON bytes), ``None`` when the row has none."""
    if isinstance(raw, bytes):
        try:
            raw = orjson.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, dict) or raw.get(column) is None:
        return None
    return parse_label_value(raw[column])


def changes(previous: RuleSet | None, new: RuleSet) -> dict[str, Any]:
    """What ``new`` changes against the set serving before: rules added, removed, changed (by id, any field), and
    list entries added and removed (by list) — the "what" of the audit record."""
    old_rules = {r.id: r.as_dict() for r in previous.rules} if previous else {}
    new_rules = {r.id: r.as_dict() for r in new.rules}
    old_lists = previous.lists if previous else {}
    lists = {}
    for name in sorted({*old_lists, *new.lists}):
        before, after = old_lists.get(name, frozenset()), new.lists.get(name, frozenset())
        if before != after:
            lists[name] = {"added": sorted(after - before), "removed": sorted(before - after)}
    return {"rules_added": sorted(new_rules.keys() - old_rules.keys()),
            "rules_removed": sorted(old_rules.keys() - new_rules.keys()),
            "rules_changed": sorted(k for k in new_rules.keys() & old_rules.keys() if old_rules[k] != new_rules[k]),
            "lists": lists}
