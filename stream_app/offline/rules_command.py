"""The `stream-app rules validate|publish|backtest` command: its arguments, and what each action does with
:mod:`stream_app.offline.rules` (validation, backtest) and :mod:`stream_app.kafka.rules_topic` (publishing).

Imports are made inside the actions, as in :mod:`stream_app.cli`: building the command line must not load the
models or the rule engine.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_app.domain.rules import Published, RuleSet
    from stream_app.settings import Settings
def add_parser(sub: Any) -> argparse.ArgumentParser:
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


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from stream_app.domain.entities import FeatureSet
    from stream_app.domain.rules import RuleError
    from stream_app.offline.rules import load_rule_file

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


def _publish(args: argparse.Namespace, settings: Settings, rule_set: RuleSet) -> int:
    import getpass
    import sys
    import time

    from stream_app.domain.entities import FeatureSet
    from stream_app.domain.events import format_ts
    from stream_app.domain.rules import Published, load_document
    from stream_app.kafka import rules_topic
    from stream_app.kafka.security import client_kwargs
    from stream_app.offline.rules import changes

    kwargs = client_kwargs(settings)
    try:
        records = rules_topic.history(settings.bootstrap_servers, settings.rules_topic, kwargs)
    except (ConnectionError, ValueError) as exc:  # e.g. the topic does not exist: `stream-app topics` creates it
        print(f"stream-app rules publish: {exc}", file=sys.stderr)
        return 1
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


def _valid(published: Published, feature_names: tuple[str, ...]) -> bool:
    """Whether a published record holds a set the workers would accept (a refused one never served)."""
    from stream_app.domain.rules import RuleError

    try:
        published.rule_set(feature_names)
    except RuleError:
        return False
    return True


def _backtest(args: argparse.Namespace, settings: Settings, rule_set: RuleSet) -> int:
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
    from stream_app.offline.rules import Label, backtest, labels_of

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
