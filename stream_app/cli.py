"""The `stream-app` command: demo, worker, broker, generate, batch, tail, train.

Configuration comes from the environment (docs/reference/settings.md); flags only say what to do this time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from stream_app.kafka.topics import catalogue, create_topics
from stream_app.settings import Settings, env_table
from stream_app.startup import StartupError, check_web_port

#: The worker's exit code after a write failed for good (sysexits' EX_SOFTWARE): restart me.
EXIT_WRITE_FAILED = 70


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.kafka.compat import Worker
    from stream_app.worker import collector
    from stream_app.worker.logs import configure_logging, json_stdlib_logging
    from stream_app.worker.shutdown import StopDeadline
    from stream_app.worker.topology import create_app

    configure_logging(settings.log_level)
    if args.create_topics:
        create_topics(settings)
    if args.processes > 1:
        from stream_app.worker.supervisor import run_processes

        return run_processes(settings, args.processes, ["--faust-log-level", args.faust_log_level])
    collector.set_thresholds(settings.gc_threshold_values())
    stream_app = create_app(settings)
    collector.PauseTimer(stream_app.metrics.gc_pause).install()
    deadline = StopDeadline(settings.shutdown_timeout_s, lambda: EXIT_WRITE_FAILED if stream_app.failure else 0)

    class _Worker(Worker):
        """faust's worker whose every output line is JSON: no terminal spinner (its cursor codes, like
        the ``ESC [?25h`` that preceded ``worker.ready``), faust's own log records through structlog."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None

        def on_logging_ready(self, stderr: IO[str]) -> None:
            level = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
                     "info": logging.INFO, "debug": logging.DEBUG}[args.faust_log_level]
            json_stdlib_logging(level, stderr)
            logging.getLogger("mode.redirect").setLevel(logging.WARNING)  # printed text: never filtered out

        def on_shutdown_signal(self, sig: signal.Signals) -> None:
            deadline.arm(sig.name)  # SIGTERM and SIGINT (Ctrl-C) both come here

        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            import structlog

            frozen = collector.freeze_startup()  # what start-up built lives as long as the process
            structlog.get_logger("stream_app.worker").info(
                "worker.ready", onnx_version=stream_app.scorer.onnx.version, gc_frozen_objects=frozen,
                web=f"{settings.web_host}:{settings.web_port}", kafka=stream_app.kafka_security.describe(),
                http_auth=bool(settings.http_token or settings.http_token_file))

    worker = _Worker(stream_app.app, loglevel=args.faust_log_level, quiet=True,
                     redirect_stdouts_level=logging.WARNING)
    stream_app.health.request_stop = worker.request_shutdown  # how a failed write stops it: bounded
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode exits 0 after a stop, 1 after a crash
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    deadline.cancel()
    return EXIT_WRITE_FAILED if stream_app.failure else code


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    create_topics(settings)
    specs = catalogue(settings)
    for spec in specs:
        print(f"topic {spec.name} partitions={spec.partitions} replication={spec.replication}", flush=True)
    print(f"RESULT topics={len(specs)}")
    return 0


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.console.server import run
    from stream_app.worker.logs import configure_logging

    configure_logging(settings.log_level)
    print(f"review page: http://{args.host}:{args.port}/review", flush=True)
    return run(settings, args.host, args.port, args.claim_seconds)


def cmd_door(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.door.server import run
    from stream_app.worker.logs import configure_logging

    configure_logging(settings.log_level)
    return run(settings, args.host or settings.web_host, args.port)


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.devtools.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        create_topics(Settings.from_env(bootstrap_servers=broker.bootstrap, partitions=settings.partitions))
        print(f"embedded broker (Tansu) listening on {broker.bootstrap}", flush=True)
        print(f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
        if args.wait:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.devtools.generator import GeneratorConfig
    from stream_app.devtools.publisher import TrafficPlan, TrafficReport, publish_traffic, until_signalled
    from stream_app.domain.events import format_ts, parse_ts
    from stream_app.kafka.security import client_kwargs

    try:
        start_ms = (None if args.start_time is None else int(time.time() * 1000) if args.start_time == "now"
                    else parse_ts(args.start_time, "--start-time"))
    except ValueError as exc:
        raise StartupError(f"{exc}, e.g. 2026-01-01T00:00:00Z or now") from None
    start: dict[str, Any] = {} if start_ms is None else {"start_ms": start_ms}
    config = GeneratorConfig(seed=args.seed, n_customers=args.customers, fraud_rate=args.fraud_rate, **start)
    plan = TrafficPlan(rate=args.rate, count=args.count, seconds=args.seconds, label_delay_s=args.label_delay,
                       malformed_rate=args.malformed_rate, wall_clock=start_ms is None)
    if plan.wall_clock:
        print(f"event times: the wall clock at each send ({args.customers} cards at {args.rate:g}/s: a card pays "
              f"every ~{args.customers / args.rate:.0f} s); --start-time for simulated days", file=sys.stderr)
    else:
        print(f"event times: simulated from {format_ts(config.start_ms)} on, a day in seconds", file=sys.stderr)

    def progress(r: TrafficReport) -> None:
        print(f"sent={r.sent} malformed={r.malformed} labels={r.labels} labels_pending={r.labels_pending}",
              file=sys.stderr, flush=True)

    report = asyncio.run(until_signalled(lambda stop: publish_traffic(
        settings.bootstrap_servers, settings.transactions_topic, settings.labels_topic, config, plan,
        on_progress=progress, stop=stop, **client_kwargs(settings))))
    if report.labels_early:
        print(f"interrupted: the last {report.labels_early} labels were sent without their delay", file=sys.stderr)
    span = ("" if report.first_event_ms is None or report.last_event_ms is None else
            f" first_event={format_ts(report.first_event_ms)} last_event={format_ts(report.last_event_ms)}")
    print(f"RESULT sent={report.sent} malformed={report.malformed} frauds={len(report.frauds)} "
          f"labels={report.labels} seconds={report.seconds:.1f}{span}")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.offline.training import ModelRefused, TrainConfig, train_and_export

    columns: dict[str, str] = {}
    for spec in args.column:
        name, sep, column = spec.partition("=")
        if not sep or not name.strip() or not column.strip():
            print(f"stream-app train: --column expects FIELD=COLUMN, got {spec!r}", file=sys.stderr)
            return 2
        columns[name.strip()] = column.strip()
    if (columns or args.label_column) and not args.data:
        print("stream-app train: --column and --label-column need --data", file=sys.stderr)
        return 2
    config = TrainConfig(seed=args.seed, n_customers=args.customers, days=args.days, output_dir=args.output_dir,
                         n_estimators=args.trees, label_delay_days=args.label_delay_days, test_days=args.test_days,
                         data_path=args.data, columns=columns or None,
                         label_column=args.label_column or "is_fraud", force=args.force,
                         review_threshold=settings.review_threshold, dedup_horizon_s=settings.dedup_horizon_s,
                         edge_trees=args.edge_trees, all_history=args.all_history, entities=settings.entities)
    try:
        card = train_and_export(config)
    except ModelRefused as exc:
        print(f"stream-app train: {exc}", file=sys.stderr)
        print(f"RESULT refused new_average_precision={exc.comparison['new_average_precision']:.4f} "
              f"current_average_precision={exc.comparison['current_average_precision']:.4f}")
        return 3
    except ValueError as exc:
        print(f"stream-app train: {exc}", file=sys.stderr)
        return 2
    test = card["metrics"]["test"]
    print(f"RESULT version={card['version']} roc_auc={test['roc_auc']:.4f} "
          f"average_precision={test['average_precision']:.4f} replaced={card['replaced']['decision']}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.devtools.demo import DemoOptions, run_demo

    return run_demo(settings, DemoOptions(seconds=args.seconds, rate=args.rate, seed=args.seed,
                                          customers=args.customers, label_delay_s=args.label_delay,
                                          malformed_rate=args.malformed_rate, quiet=args.quiet,
                                          drift_at_s=args.drift_at, drift_factor=args.drift_factor))


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from collections.abc import Iterable
    from pathlib import Path

    from stream_app.domain.events import parse_ts
    from stream_app.domain.pan import PanTokenizer
    from stream_app.offline.batch import Position, Progress, RawRow, file_format, load_scorer, read_file, run

    ranged = (args.start_offset, args.end_offset, args.start_time, args.end_time) != (None,) * 4
    rows: Iterable[tuple[Position, RawRow]] | None = None
    try:
        if args.input and ranged:
            raise ValueError("--start-/--end-offset and --start-/--end-time need --from-topic")
        if min(args.start_offset or 0, args.end_offset or 0, args.batch_rows - 1) < 0:
            raise ValueError("offsets must be >= 0 and --batch-rows >= 1")
        output = Path(args.output)
        file_format(output)
        if args.input:
            rows = read_file(Path(args.input))
        start_ms = None if args.start_time is None else parse_ts(args.start_time, "--start-time")
        end_ms = None if args.end_time is None else parse_ts(args.end_time, "--end-time")
        loaded = load_scorer(settings, Path(args.checkpoint_dir) if args.checkpoint_dir else None)
        if args.rules:  # the stream's rule set, as `stream-app rules publish` sent it (RuleError is a ValueError)
            from stream_app.domain.rules import RulesSlot
            from stream_app.offline.rules import load_rule_file

            loaded.scorer.rules = RulesSlot(load_rule_file(Path(args.rules), loaded.scorer.features.names))
        pans = PanTokenizer.from_settings(settings)
    except (ValueError, OSError) as exc:
        print(f"stream-app batch: {exc}", file=sys.stderr)
        return 2
    for reason in loaded.refused:
        print(f"checkpoint refused: {reason}", file=sys.stderr)
    versions = " ".join(f"{name}={version}" for name, version in loaded.scorer.versions().items())
    rules = loaded.scorer.rules.current
    print(f"models: {versions}; river from {loaded.origin}" + (f"; rules {rules.version}" if rules else ""), flush=True)
    progress = Progress(sys.stderr)
    if rows is None:
        from stream_app.kafka.security import client_kwargs
        from stream_app.kafka.topic_reader import TopicRange, read_topic

        bounds = TopicRange(args.start_offset or 0, args.end_offset, start_ms, end_ms)
        progress.start(f"fetching {args.from_topic}")
        try:
            messages = read_topic(settings.bootstrap_servers, args.from_topic, bounds, on_progress=progress.update,
                                  client_kwargs=client_kwargs(settings))
        except (ConnectionError, ValueError) as exc:
            print(f"stream-app batch: {exc}", file=sys.stderr)
            return 1
        progress.finish(len(messages))
        rows = messages
    result = run(rows, output, loaded.scorer, horizon_ms=settings.dedup_horizon_s * 1000,
                 max_bytes=settings.max_message_bytes, batch_rows=args.batch_rows, progress=progress, pans=pans)
    print(result.summary())
    return 0


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.devtools.publisher import until_signalled
    from stream_app.kafka.tail import TailOptions, printer, tail_command

    show = printer(settings, args.decision, args.card, args.reason, as_json=args.json)
    options = TailOptions(args.from_beginning, args.max, args.seconds, args.exit_at_end)
    return asyncio.run(until_signalled(lambda stop: tail_command(settings, args.topic, show, options, stop)))


def _positive(convert: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: ``convert(text)`` > 0."""
    def parse(text: str) -> float:
        value = convert(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def cmd_rules(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.offline.rules_command import run_command

    return run_command(args, settings)


def preflight(args: argparse.Namespace, settings: Settings) -> None:
    """Check what the command needs before it starts, local things first, so that a mistake is one line
    naming the fix (:class:`StartupError`) instead of a traceback, a retry loop or a half-started worker."""
    needs_kafka = (args.command in ("worker", "door", "topics", "generate", "tail", "console")
                   or bool(getattr(args, "from_topic", None)) or getattr(args, "rules_action", None) == "publish")
    if needs_kafka and not settings.bootstrap_servers:
        raise StartupError("set KAFKA_BOOTSTRAP_SERVERS to your broker's host:port "
                           "(or run `stream-app broker` for an embedded one)")
    if args.command == "worker":
        if args.processes < 1:
            raise StartupError("--processes must be at least 1")
        from stream_app.worker.supervisor import web_ports

        for port in web_ports(settings, args.processes):
            check_web_port(settings.web_host, port)
    if args.command == "console":
        check_web_port(args.host, args.port)
    if args.command == "door":
        check_web_port(args.host or settings.web_host, args.port)
    if args.command in ("worker", "door", "batch", "demo"):  # the model files load (the demo's worker child loads them)
        from stream_app.domain.scoring import FraudScorer

        FraudScorer.from_settings(settings)
    if needs_kafka or (args.command == "demo" and settings.bootstrap_servers):
        from stream_app.kafka.preflight import check_broker
        from stream_app.kafka.security import client_kwargs

        check_broker(settings.bootstrap_servers, client_kwargs(settings))


def build_parser() -> argparse.ArgumentParser:
    env_help = "\n".join(f"  {name:36} {doc}" for name, _default, doc in env_table())
    parser = argparse.ArgumentParser(
        prog="stream-app", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Real-time fraud scoring on Kafka with River + ONNX.",
        epilog=f"environment:\n{env_help}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="embedded broker + worker + synthetic traffic; prints alerts and a summary")
    demo.add_argument("--seconds", type=float, default=60.0, help="how long traffic runs (default 60)")
    demo.add_argument("--rate", type=float, default=500.0, help="transactions per second (default 500)")
    demo.add_argument("--customers", type=int, default=5000, help="simulated customers (default 5000)")
    demo.add_argument("--label-delay", type=float, default=5.0, help="seconds from a transaction to its label")
    demo.add_argument("--malformed-rate", type=float, default=0.005, help="share of malformed events")
    demo.add_argument("--seed", type=int, default=42, help="generator seed")
    demo.add_argument("--quiet", action="store_true", help="no alert lines, only progress and summary")
    demo.add_argument("--drift-at", type=float, default=None, metavar="SECONDS",
                      help="drift scenario: from this second on, amounts are multiplied by --drift-factor "
                           "(the worker's drift monitor reports it)")
    demo.add_argument("--drift-factor", type=float, default=3.0, help="amount factor of the drift scenario (default 3)")
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="run the Faust worker against KAFKA_BOOTSTRAP_SERVERS")
    worker.add_argument("--create-topics", action="store_true", help="create the app's topics first")
    worker.add_argument("--faust-log-level", default="warn", choices=["crit", "error", "warn", "info", "debug"],
                        help="log level of Faust's own logger (default warn)")
    worker.add_argument("--processes", type=int, default=1, metavar="N",
                        help="run N worker processes (one per core), each a consumer group member with its own "
                             "learner, data directory DATA_DIR/worker-i and web port WEB_PORT+i (default 1)")
    worker.set_defaults(func=cmd_worker)

    door = sub.add_parser(
        "door", help="POST /score in a process of its own, fed from the workers' logs (real-time under stream load)",
        description="Serve the worker's pages (/score, /ready, /models, /metrics, /openapi.json) from a process that "
                    "follows the cards changelog, the scores topic, the examples log and the rules topic: answers as "
                    "a worker would, for every card of the group, without waiting behind the stream's batches. "
                    "Read only: it writes nothing to Kafka.")
    door.add_argument("--host", default=None, help="address to bind (default STREAM_APP_WEB_HOST)")
    door.add_argument("--port", type=int, default=6069, help="port (default 6069)")
    door.set_defaults(func=cmd_door)

    topics = sub.add_parser("topics", help="create the app's topics on KAFKA_BOOTSTRAP_SERVERS (idempotent) and exit")
    topics.set_defaults(func=cmd_topics)

    console = sub.add_parser("console", help="the alert review page: a live queue of alerts, claims, verdicts that "
                                             "become labels")
    console.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    console.add_argument("--port", type=int, default=6070, help="port of the page (default 6070)")
    console.add_argument("--claim-seconds", type=float, default=300.0,
                         help="a claim not renewed or decided within this time is released (default 300)")
    console.set_defaults(func=cmd_console)

    broker = sub.add_parser("broker", help="run the embedded broker alone and print its address")
    broker.add_argument("--no-wait", dest="wait", action="store_false", help="start, print, stop (a smoke check)")
    broker.set_defaults(func=cmd_broker)

    batch = sub.add_parser("batch", help="score a file or a topic range with the stream's code into a file")
    source = batch.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="FILE", help="transactions: .csv, .jsonl or .parquet")
    source.add_argument("--from-topic", metavar="TOPIC", help="rescore this topic's messages (KAFKA_BOOTSTRAP_SERVERS)")
    batch.add_argument("--output", required=True, metavar="FILE",
                       help="scores: .jsonl, .csv or .parquet; refused rows go to OUTPUT.errors.jsonl")
    batch.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                       help="River checkpoints to restore (default $STREAM_APP_DATA_DIR/checkpoints)")
    batch.add_argument("--start-offset", type=int, metavar="N", help="first offset read in each partition")
    batch.add_argument("--end-offset", type=int, metavar="N", help="offset where each partition stops (exclusive)")
    batch.add_argument("--start-time", metavar="RFC3339", help="first message timestamp read (RFC 3339)")
    batch.add_argument("--end-time", metavar="RFC3339", help="message timestamp where each partition stops (RFC 3339)")
    batch.add_argument("--batch-rows", type=int, default=4096, metavar="N", help="rows per scoring call (default 4096)")
    batch.add_argument("--rules", metavar="FILE", help="apply this rule set (YAML or JSON, see `stream-app rules`)")
    batch.set_defaults(func=cmd_batch)

    gen = sub.add_parser("generate", help="publish synthetic transactions and their labels")
    gen.add_argument("--rate", type=float, default=1000.0, help="transactions per second")
    gen.add_argument("--count", type=int, default=None, help="stop after this many transactions")
    gen.add_argument("--seconds", type=float, default=None, help="stop after this long")
    gen.add_argument("--fraud-rate", type=float, default=0.01, help="target fraud share")
    gen.add_argument("--label-delay", type=float, default=5.0,
                     help="seconds from a transaction to its label (the last ones are waited for); negative: none")
    gen.add_argument("--malformed-rate", type=float, default=0.0, help="share of malformed events")
    gen.add_argument("--customers", type=int, default=5000, help="simulated customers")
    gen.add_argument("--seed", type=int, default=42, help="generator seed (same seed, same traffic)")
    gen.add_argument("--start-time", metavar="RFC3339|now", default=None,
                     help="simulated event times from this instant on (a backfill; `now`: from the current time), a "
                          "simulated day every few seconds, so card histories look like days of use "
                          "(default: each transaction's event time is the wall clock when it is sent)")
    gen.set_defaults(func=cmd_generate)

    tail = sub.add_parser(
        "tail", help="print a topic's messages as they arrive, one readable (or JSON) line each, with filters",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Follow TOPIC (fraud-alerts, scores, transactions.dlq, labels.dlq, any topic) from every "
                    "partition without joining a consumer group: nothing is committed, the workers are not "
                    "disturbed. Card numbers are masked and control characters escaped in every line. Filters "
                    "combine (AND); a filter given several times matches any of its values (OR).",
        epilog="exit codes: 0 stopped (Ctrl-C, SIGTERM, --max, --seconds, --exit-at-end), 1 broker not "
               "answering or unknown topic, 2 bad arguments or settings")
    tail.add_argument("topic", metavar="TOPIC", help="the topic to follow")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at each partition's first message (default: only messages arriving from now on)")
    tail.add_argument("--decision", action="append", default=[], choices=["approve", "review", "decline"],
                      help="only records with this decision (scores, alerts; repeatable)")
    tail.add_argument("--card", action="append", default=[], metavar="TOKEN|PAN",
                      help="only messages about this card: its token as records show it, or its card number "
                           "(tokenized with STREAM_APP_PAN_KEY, never printed; repeatable)")
    tail.add_argument("--reason", action="append", default=[], metavar="CODE",
                      help="only records with this reason code: an alert's reason feature (amount_to_mean_30d) "
                           "or a dead letter's reason (invalid_json); repeatable")
    tail.add_argument("--json", action="store_true",
                      help="one JSON object per line: topic, partition, offset, timestamp, key, record")
    tail.add_argument("--max", type=_positive(int), default=None, metavar="N", help="stop after N lines shown")
    tail.add_argument("--seconds", type=_positive(float), default=None, metavar="S", help="stop after S seconds")
    tail.add_argument("--exit-at-end", action="store_true",
                      help="stop once every partition has been read to its end (with --from-beginning: a dump)")
    tail.set_defaults(func=cmd_tail)

    train = sub.add_parser(
        "train", help="train the offline model on generated history (or --data FILE) and export ONNX",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the offline model with a temporal split (train period, a gap as long as the label "
                    "delay, test period) on generated history or on your labeled transactions (--data), and "
                    "export fraud_gbt.onnx, its card (.card.json) and a precision-recall curve (fraud_gbt.pr.png). "
                    "A model already in the output directory is scored on the same test rows; a new model whose "
                    "average precision is lower by more than 0.005 is refused (exit code 3, nothing written) "
                    "unless --force.",
        epilog="""data file (--data), CSV (.csv, .csv.gz) or Parquet (.parquet, .pq), one row per transaction:
  tx_id         unique id, [A-Za-z0-9_.:-]{1,64}
  card_id       card token (same format), never a raw card number
  merchant_id   merchant id (same format)
  amount        number > 0, in currency
  currency      ISO 4217 code known to stream_app (docs/reference/records.md)
  timestamp     event time: RFC 3339 with an offset (2026-01-03T02:10:00Z) or epoch milliseconds
                (Parquet: also a timezone-aware timestamp column)
  country       ISO 3166-1 alpha-2 of the merchant
  channel       pos, ecom, atm or moto
  mcc           4-digit merchant category code (an integer column is zero-padded)
  is_fraud      the label: 1/0, true/false, fraud/legit (case-insensitive)
Other columns are ignored. When your columns are named differently, map them:
  --column amount=amt --column timestamp=event_time --label-column chargeback
Every row is validated like a stream event; invalid rows are counted per reason, printed and written
to OUTPUT_DIR/training_rejects.jsonl (row number, reason, column, values). Valid rows are sorted by
event time and replayed through the stream's own feature code.

exit codes: 0 written, 2 bad arguments or unusable data, 3 refused (the current model is better)""")
    train.add_argument("--days", type=int, default=60, help="simulated days of history (generated history only)")
    train.add_argument("--customers", type=int, default=3000, help="simulated customers (generated history only)")
    train.add_argument("--trees", type=int, default=150, help="boosting rounds")
    train.add_argument("--seed", type=int, default=7, help="seed of the generated history and of the trees")
    train.add_argument("--label-delay-days", type=int, default=7,
                       help="days between the train and test periods, as long as labels take to arrive (default 7)")
    train.add_argument("--test-days", type=int, default=14, help="days at the end used as test period (default 14)")
    train.add_argument("--data", metavar="FILE", default=None,
                       help="train on labeled transactions from this CSV or Parquet file (columns below)")
    train.add_argument("--column", metavar="FIELD=COLUMN", action="append", default=[],
                       help="read transaction field FIELD from column COLUMN of --data (repeatable)")
    train.add_argument("--label-column", metavar="NAME", default=None,
                       help="the label column of --data (default is_fraud)")
    train.add_argument("--force", action="store_true",
                       help="replace the current model even when the new one scores worse on the same test rows")
    train.add_argument("--edge-trees", type=int, default=0,
                       help="also export a small model (this many trees of depth 4) to OUTPUT_DIR/edge/ "
                            "(default: none)")
    train.add_argument("--all-history", action="store_true",
                       help="production retrain: evaluate on the held-out test period as usual, then export the "
                            "same recipe refitted on all rows whose labels had arrived by the data's end")
    train.add_argument("--output-dir", default=None, help="where to write the model (default: the package)")
    train.set_defaults(func=cmd_train)

    from stream_app.offline.rules_command import add_parser

    add_parser(sub).set_defaults(func=cmd_rules)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        sys.argv = [sys.argv[0], "worker"]  # Faust's Worker reads sys.argv
    try:
        settings = Settings.from_env()
        if settings.bootstrap_servers and args.command != "train":
            from stream_app.kafka.security import kafka_security

            kafka_security(settings)  # unreadable CA, key or password file: say so before connecting
    except ValueError as exc:
        print(f"stream-app: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        preflight(args, settings)
        return int(args.func(args, settings))
    except StartupError as exc:
        print(f"stream-app {args.command}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
