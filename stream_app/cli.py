"""The `stream-app` command: demo, worker, broker, generate, train.

Configuration comes from the environment (see README); flags only say what to do this time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from stream_app.settings import Settings, env_table


def _topic_specs(settings: Settings) -> list:  # type: ignore[type-arg]
    from stream_app.kafka.topics import TopicSpec

    week = {"retention.ms": str(7 * 86400 * 1000)}
    names = (settings.transactions_topic, settings.rekeyed_topic, settings.dlq_topic, settings.scores_topic,
             settings.alerts_topic, settings.labels_topic, settings.labels_dlq_topic)
    # The examples log has one partition: one order of examples, hence one model on every worker.
    examples = TopicSpec(settings.examples_topic, 1,
                         config={"retention.ms": str(settings.feature_retention_s * 1000)})
    return [*(TopicSpec(n, settings.partitions, config=week) for n in names), examples]


def create_topics(settings: Settings) -> None:
    from stream_app.kafka.topics import ensure_topics

    asyncio.run(ensure_topics(settings.bootstrap_servers, _topic_specs(settings)))


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from faust.worker import Worker

    from stream_app.app import create_app
    from stream_app.observability import configure_logging

    configure_logging(settings.log_level)
    if not settings.bootstrap_servers:
        print("stream-app worker: set KAFKA_BOOTSTRAP_SERVERS (or run `stream-app broker`)", file=sys.stderr)
        return 2
    if args.create_topics:
        create_topics(settings)
    stream_app = create_app(settings)

    class _Worker(Worker):
        def _setup_logging(self) -> None:
            super()._setup_logging()
            # mode's logging set-up leaves these loggers at DEBUG whatever the requested level: every
            # produced record then paid for a formatted debug line (~6 % of the worker's time).
            level = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
                     "info": logging.INFO, "debug": logging.DEBUG}[args.faust_log_level]
            for name in ("", "faust", "mode", "aiokafka"):
                logging.getLogger(name).setLevel(level)

        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            import structlog

            structlog.get_logger("stream_app.worker").info(
                "worker.ready", onnx_version=stream_app.scorer.onnx.version,
                web=f"{settings.web_host}:{settings.web_port}")

    worker = _Worker(stream_app.app, loglevel=args.faust_log_level, quiet=True)
    worker.execute_from_commandline()
    return 0


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.kafka.broker import EmbeddedBroker

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
    from stream_app.generator import GeneratorConfig
    from stream_app.kafka.publisher import TrafficPlan, publish_traffic

    if not settings.bootstrap_servers:
        print("stream-app generate: set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    config = GeneratorConfig(seed=args.seed, n_customers=args.customers, fraud_rate=args.fraud_rate)
    plan = TrafficPlan(rate=args.rate, count=args.count, seconds=args.seconds,
                       label_delay_s=args.label_delay, malformed_rate=args.malformed_rate)

    def progress(r) -> None:  # type: ignore[no-untyped-def]
        print(f"sent={r.sent} malformed={r.malformed} labels={r.labels}", file=sys.stderr, flush=True)

    report = asyncio.run(publish_traffic(settings.bootstrap_servers, settings.transactions_topic,
                                         settings.labels_topic, config, plan, on_progress=progress))
    print(f"RESULT sent={report.sent} malformed={report.malformed} frauds={len(report.frauds)} "
          f"labels={report.labels} seconds={report.seconds:.1f}")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.training import TrainConfig, train_and_export

    card = train_and_export(TrainConfig(seed=args.seed, n_customers=args.customers, days=args.days,
                                        output_dir=args.output_dir, n_estimators=args.trees))
    print(f"RESULT version={card['version']} roc_auc={card['metrics']['test']['roc_auc']:.4f} "
          f"average_precision={card['metrics']['test']['average_precision']:.4f}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.demo import DemoOptions, run_demo

    return run_demo(settings, DemoOptions(seconds=args.seconds, rate=args.rate, seed=args.seed,
                                          customers=args.customers, label_delay_s=args.label_delay,
                                          malformed_rate=args.malformed_rate, quiet=args.quiet))


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
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="run the Faust worker against KAFKA_BOOTSTRAP_SERVERS")
    worker.add_argument("--create-topics", action="store_true", help="create the app's topics first")
    worker.add_argument("--faust-log-level", default="warn", choices=["crit", "error", "warn", "info", "debug"],
                        help="log level of Faust's own logger (default warn)")
    worker.set_defaults(func=cmd_worker)

    broker = sub.add_parser("broker", help="run the embedded broker alone and print its address")
    broker.add_argument("--no-wait", dest="wait", action="store_false", help="start, print, stop (a smoke check)")
    broker.set_defaults(func=cmd_broker)

    gen = sub.add_parser("generate", help="publish synthetic transactions and their labels")
    gen.add_argument("--rate", type=float, default=1000.0, help="transactions per second")
    gen.add_argument("--count", type=int, default=None, help="stop after this many transactions")
    gen.add_argument("--seconds", type=float, default=None, help="stop after this long")
    gen.add_argument("--fraud-rate", type=float, default=0.01, help="target fraud share")
    gen.add_argument("--label-delay", type=float, default=5.0, help="seconds until a label; negative: none")
    gen.add_argument("--malformed-rate", type=float, default=0.0, help="share of malformed events")
    gen.add_argument("--customers", type=int, default=5000, help="simulated customers")
    gen.add_argument("--seed", type=int, default=42, help="generator seed (same seed, same traffic)")
    gen.set_defaults(func=cmd_generate)

    train = sub.add_parser("train", help="train the offline model on generated history and export ONNX")
    train.add_argument("--days", type=int, default=60, help="simulated days of history")
    train.add_argument("--customers", type=int, default=3000, help="simulated customers")
    train.add_argument("--trees", type=int, default=150, help="boosting rounds")
    train.add_argument("--seed", type=int, default=7, help="generator seed of the training history")
    train.add_argument("--output-dir", default=None, help="where to write the model (default: the package)")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        sys.argv = [sys.argv[0], "worker"]  # Faust's Worker reads sys.argv
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"stream-app: configuration error: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
