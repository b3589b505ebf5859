"""The scoring core's cost per event, by stage, in process and without Kafka: what one worker spends on an
event between the bytes fetched and the records handed to the producer.

Generated events (raw JSON, as a payment system sends them) are scored in micro-batches of ``--batch``
through the worker's own parts: the ingress (parse, validate, card state, card and entity features), the
local entity fold, the card states encoded as stored, both models, the score and alert records, and the
captured vector of the label join. Card states live in a dict of stored bytes, as in the worker's table, and
the garbage collector is set as the worker sets it (``STREAM_APP_GC_THRESHOLDS``, start-up frozen).

``--against DIR`` runs this same script on another checkout of the project (e.g. a ``git worktree`` of the
commit before a change) interleaved with this one, ``--runs`` times each, and reports the medians side by
side: before/after from one run of the machine.

Run: python benchmarks/core.py [--events 20000] [--batch 500] [--against /tmp/base --runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from itertools import islice
from typing import Any

import orjson

STAGES = ("ingress", "entity_fold", "state_encode", "models", "records", "capture")


def worker_gc_settings(settings: Any) -> None:
    """The garbage collector as the worker sets it (worker/collector.py); a checkout from before those settings
    (``--against``) keeps CPython's, as its worker did."""
    try:
        from stream_app.worker.collector import freeze_startup, set_thresholds
    except ImportError:
        return
    set_thresholds(settings.gc_threshold_values())
    freeze_startup()


def measure(n_events: int, batch: int) -> dict[str, float]:
    """µs per event by stage (and in all), for ``n_events`` scored after a warm-up of as many."""
    from stream_app.devtools.generator import GeneratorConfig, simulate
    from stream_app.domain.entities import EntityTable, parse_entities
    from stream_app.domain.events import Transaction
    from stream_app.domain.ingress import Ingress
    from stream_app.domain.learning import Captured
    from stream_app.domain.pan import PanTokenizer
    from stream_app.domain.records import Source, alert_record, score_record
    from stream_app.domain.scoring import FraudScorer
    from stream_app.settings import Settings
    from stream_app.worker.delivery import decode_card, encode_card

    settings = Settings.from_env({})
    scorer = FraudScorer.from_settings(settings)
    table = EntityTable(parse_entities(settings.entities), secret=b"k" * 32)
    ingress = Ingress(settings.max_message_bytes, 7 * 86_400_000, PanTokenizer(b"k" * 32), "transactions",
                      settings.partitions, table)
    raws = [x.tx.to_bytes() for x in islice(simulate(GeneratorConfig(seed=11, n_customers=2000), days=60),
                                            2 * n_events)]
    if len(raws) < 2 * n_events:
        raise SystemExit(f"the generator made {len(raws)} events, fewer than 2 x --events")
    stored: dict[bytes, bytes] = {}
    spent: dict[str, float] = defaultdict(float)
    worker_gc_settings(settings)

    def load(card_id: str) -> Any:
        value = stored.get(card_id.encode())
        return None if value is None else decode_card(value)[0]

    reasons = scorer.reasons
    counted = 0
    for start in range(0, len(raws), batch):
        timing = start >= n_events
        chunk = raws[start:start + batch]
        clock = {stage: 0.0 for stage in STAGES}
        states: dict[str, Any] = {}
        txs: list[Transaction] = []
        rows: list[list[float]] = []
        for raw in chunk:
            t0 = time.perf_counter()
            out = ingress(raw, None, "transactions.by-card", states, load, partition=None)
            t1 = time.perf_counter()
            clock["ingress"] += t1 - t0
            if out.kind == "scored" and out.tx is not None and out.row is not None:
                txs.append(out.tx)
                rows.append(out.row)
                table.observe(table.observation(out.tx))
                clock["entity_fold"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        for card_id, card in states.items():
            stored[card_id.encode()] = encode_card(card, None)
        t1 = time.perf_counter()
        scored = scorer.score_many(txs, rows)
        t2 = time.perf_counter()
        now = int(time.time() * 1000)
        records = []
        for i, item in enumerate(scored):
            source = Source("transactions.by-card", 0, start + i, now)
            records.append(orjson.dumps(score_record(item, source, now, table.personal_keys(item.tx))))
            if item.is_alert:
                records.append(orjson.dumps(alert_record(item, reasons, now)))
        t3 = time.perf_counter()
        captured = [Captured.from_scored(item, now, table.keys(item.tx)).to_bytes() for item in scored]
        t4 = time.perf_counter()
        if len(captured) < len(chunk) * 0.9:
            raise SystemExit(f"only {len(captured)} of {len(chunk)} events scored: the benchmark's input is wrong")
        clock["state_encode"] += t1 - t0
        clock["models"] += t2 - t1
        clock["records"] += t3 - t2
        clock["capture"] += t4 - t3
        if timing:
            counted += len(chunk)
            for stage, seconds in clock.items():
                spent[stage] += seconds
    result = {stage: spent[stage] / counted * 1e6 for stage in STAGES}
    result["total"] = sum(result.values())
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="events timed (after as many of warm-up)")
    ap.add_argument("--batch", type=int, default=500, help="micro-batch size")
    ap.add_argument("--against", help="another checkout of the project, measured in the same run")
    ap.add_argument("--runs", type=int, default=3, help="with --against: runs of each, interleaved")
    ap.add_argument("--json", action="store_true", help="print one JSON line (what --against reads)")
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args.events, args.batch)))
        return
    contenders = {"this": os.getcwd()}
    if args.against:
        contenders = {"against": os.path.abspath(args.against), "this": os.getcwd()}
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    for i in range(args.runs if args.against else 1):
        for name, root in contenders.items():
            env = {**os.environ, "PYTHONPATH": root}
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--json", "--events", str(args.events),
                                  "--batch", str(args.batch)], env=env, cwd=root, check=True,
                                 capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"run {i + 1} {name}: {runs[name][-1]['total']:.1f} µs/event", file=sys.stderr)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    print(f"µs per event, medians of {len(runs['this'])} run(s), micro-batches of {args.batch}, "
          f"{args.events} events timed")
    print(f"{'stage':<14}" + "".join(f"{name:>10}" for name in medians))
    for stage in (*STAGES, "total"):
        print(f"{stage:<14}" + "".join(f"{m[stage]:>10.1f}" for m in medians.values()))
    line = " ".join(f"{name}_us={m['total']:.1f}" for name, m in medians.items())
    if "against" in medians:
        line += f" ratio={medians['against']['total'] / medians['this']['total']:.2f}"
    print(f"RESULT {line}")


if __name__ == "__main__":
    main()
