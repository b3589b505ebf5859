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


# -- the command ----------------------------------------------------------------------------------------------------
def add_parser(sub: Any) -> Any:
    """`stream-app rules validate|publish|backtest` (registered by stream_app/cli.py)."""
    rules = sub.add_parser("rules", help="validate, publish or backtest a rule set (YAML or JSON)")
    actions = rules.add_subparsers(dest="rules_action", required=True)
    validate = actions.add_parser("validate", help="check a rule-set file; exit 2 with every problem when refused")
    validate.add_argument("file", metavar="FILE")
    publish = actions.add_parser("publish", help="validate FILE and publish it to the rules topic (audit record "
                                                 "first); running workers apply it within seconds")
    publish.add_argument("file", metavar="FILE")
    publish.add_argument("--author", default=None, help="who publishes (default: the login name)")
    publish.add_argument("--comment", default="", help="why: kept in the audit trail")
    backtest = actions.add_parser("backtest", help="replay history through the scoring core with FILE's rules and "
                                                   "report per rule the alerts it adds and removes, with precision")
    backtest.add_argument("file", metavar="FILE")
    source = backtest.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="HISTORY", help="transactions (.csv/.jsonl/.parquet), labels in a column")
    source.add_argument("--from-topic", metavar="TOPIC", help="replay this topic's messages (KAFKA_BOOTSTRAP_SERVERS)")
    backtest.add_argument("--label-column", default="is_fraud", help="label column of --input (default is_fraud)")
    backtest.add_argument("--label-maturity-days", type=float, default=7.0,
                          help="labels of transactions younger than this at the history's end are not mature: left "
                               "out of precision (default 7, the training protocol's label delay)")
    backtest.add_argument("--as-enforced", action="store_true", help="enforce the shadow rules too")
    backtest.add_argument("--days", type=float, default=21.0,
                          help="without --input/--from-topic: days of generated history (default 21)")
    backtest.add_argument("--customers", type=int, default=1000, help="customers of the generated history")
    backtest.add_argument("--seed", type=int, default=7, help="seed of the generated history")
    backtest.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                          help="River checkpoints to restore (default $STREAM_APP_DATA_DIR/checkpoints)")
    return rules


def run_command(args: Any, settings: Any) -> int:
    import sys

    from stream_app.domain.entities import FeatureSet
    from stream_app.domain.rules import RuleError

    names = FeatureSet.parse(settings.entities).names
    try:
        rule_set = load_rule_file(Path(args.file), names)
    except OSError as exc:
        print(f"stream-app rules: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except RuleError as exc:
        print(f"stream-app rules: {args.file} refused, {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.rules_action == "validate":
        modes = {m: sum(r.mode == m for r in rule_set.rules) for m in ("enforce", "shadow")}
        print(f"{args.file}: valid, {len(rule_set.rules)} rules ({modes['enforce']} enforced, {modes['shadow']} "
              f"shadow), {len(rule_set.lists)} lists, sha256 {rule_set.sha256}")
        return 0
    if args.rules_action == "publish":
        return _publish(args, settings, rule_set)
    return _backtest(args, settings, rule_set)


def _publish(args: Any, settings: Any, rule_set: RuleSet) -> int:
    import getpass
    import time

    from stream_app.domain.entities import FeatureSet
    from stream_app.domain.events import format_ts
    from stream_app.domain.rules import Published, load_document
    from stream_app.kafka import rules_topic
    from stream_app.kafka.security import client_kwargs

    kwargs = client_kwargs(settings)
    records = rules_topic.history(settings.bootstrap_servers, settings.rules_topic, kwargs)
    names = FeatureSet.parse(settings.entities).names
    serving = next((p for p in reversed(records) if _valid(p, names)), None)  # what workers serve: the baseline
    author = args.author or getpass.getuser()
    published = Published(max((p.version for p in records), default=0) + 1,
                          load_document(Path(args.file).read_bytes()), author, int(time.time() * 1000), args.comment)
    what = changes(serving.rule_set(names) if serving else None, rule_set)
    audit = {"version": published.version, "published_by": author, "published_at": format_ts(published.published_at_ms),
             "comment": args.comment, "sha256": rule_set.sha256,
             "previous_version": serving.version if serving else None, "changes": what,
             "document": published.document}
    rules_topic.publish(settings.bootstrap_servers, settings.rules_topic, settings.rules_audit_topic, published, audit,
                        kwargs)
    print(f"published rule set version {published.version} ({len(rule_set.rules)} rules) to "
          f"{settings.rules_topic} by {author}; audit on {settings.rules_audit_topic}: "
          f"added {what['rules_added']} removed {what['rules_removed']} changed {what['rules_changed']}")
    print(f"RESULT version={published.version} rules={len(rule_set.rules)} sha256={rule_set.sha256}")
    return 0


def _valid(published: Any, feature_names: tuple[str, ...]) -> bool:
    """Whether a published record holds a set the workers would accept (a refused one never served)."""
    from stream_app.domain.rules import RuleError

    try:
        published.rule_set(feature_names)
    except RuleError:
        return False
    return True


def _backtest(args: Any, settings: Any, rule_set: RuleSet) -> int:
    import os
    import sys

    from stream_app.devtools.generator import GeneratorConfig, label_delay_ms, simulate
    from stream_app.domain.events import Transaction
    from stream_app.domain.rules import RulesSlot
    from stream_app.offline.batch import (
        ErrorLog,
        Position,
        Progress,
        RawRow,
        event_time_order,
        load_scorer,
        read_file,
        replay,
    )

    if args.as_enforced:
        rule_set = rule_set.enforcing_all()
    try:
        loaded = load_scorer(settings, Path(args.checkpoint_dir) if args.checkpoint_dir else None)
    except ValueError as exc:
        print(f"stream-app rules backtest: {exc}", file=sys.stderr)
        return 2
    scorer = loaded.scorer
    scorer.rules = RulesSlot(rule_set)
    errors = ErrorLog(Path(os.devnull))
    labels: dict[str, Label] = {}
    ordered: list[tuple[Transaction, Position]]
    rows: list[tuple[Position, RawRow]]
    if args.input or args.from_topic:
        if args.input:
            try:
                rows = list(read_file(Path(args.input)))
            except ValueError as exc:
                print(f"stream-app rules backtest: {exc}", file=sys.stderr)
                return 2
            origin = args.input
        else:
            from stream_app.kafka.security import client_kwargs
            from stream_app.kafka.topic_reader import TopicRange, read_topic

            rows = list(read_topic(settings.bootstrap_servers, args.from_topic, TopicRange(),
                                   client_kwargs=client_kwargs(settings)))
            origin = f"topic {args.from_topic}"
        by_position = {position: labels_of(raw, args.label_column) for position, raw in rows}
        ordered, _ = event_time_order(rows, settings.max_message_bytes, errors, Progress(None))
        labels = {tx.tx_id: Label(label, None) for tx, position in ordered
                  if (label := by_position.get(position)) is not None}
    else:
        items = list(simulate(GeneratorConfig(seed=args.seed, n_customers=args.customers), days=args.days))
        ordered = [(item.tx, n) for n, item in enumerate(items, 1)]
        labels = {i.tx.tx_id: Label(i.is_fraud, i.tx.ts_ms + label_delay_ms(i)) for i in items}
        origin = f"generated history ({args.days:g} days, {args.customers} customers, seed {args.seed})"
    print(f"backtest of rule set {rule_set.version} ({len(rule_set.rules)} rules) on {origin}; "
          f"models {' '.join(f'{k}={v}' for k, v in scorer.versions().items())}", flush=True)
    scored = [s for batch in replay(ordered, scorer, settings.dedup_horizon_s * 1000, errors) for s in batch]
    report = backtest(rule_set, scored, labels, args.label_maturity_days)
    print(report.table())
    print(report.totals())
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(report.summary())
    return 0
