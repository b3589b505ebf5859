"""Prometheus metrics of a worker or a door, built against an injected registry (tests pass a fresh one).

Names follow Prometheus conventions: `stream_app_..._total` counters, `_seconds` histograms, base
units. The worker's `worker.stats` log line is read from the same objects, so logs and metrics
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream_app.kafka.compat import histogram_observe_many

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
GC_PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STAGES = ("decode", "features", "onnx", "river", "produce")
SCORE_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
ROLES = ("worker", "door")
#: The metrics only one kind of process updates, by attribute: the other leaves them out of its registry, so a
#: dashboard never shows a door as a worker that scores nothing (the rest both processes keep up to date).
ONLY: dict[str, str] = {
    **dict.fromkeys(("consumed", "scored", "dead_lettered", "duplicates", "rekeyed", "alerts", "latency",
                     "stage_seconds", "batch_size", "risk", "lag", "labels", "checkpoint_time", "card_state_bytes",
                     "captured", "drift_psi", "drift_detected", "rule_hits"), "worker"),
    "card_replica_lag": "door",
}


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, in one pass (a lock per bucket per value costs more than
    scoring the event; prometheus-client's internals are used in :mod:`stream_app.kafka.compat`)."""
    histogram_observe_many(histogram, values)


class Metrics:
    """Every metric of the project; ``role`` ("worker" or "door") says which of them this process exposes."""

    def __init__(self, registry: CollectorRegistry | None = None, role: str = "worker") -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.consumed = Counter("stream_app_events_consumed", "Transaction messages consumed.", registry=r)
        self.scored = Counter("stream_app_events_scored", "Transactions scored (one score record each).", registry=r)
        self.dead_lettered = Counter("stream_app_events_dead_lettered", "Messages sent to a dead-letter topic.",
                                     ["topic", "reason"], registry=r)
        self.duplicates = Counter("stream_app_events_duplicate", "Redelivered or replayed transactions skipped.",
                                  registry=r)
        self.rekeyed = Counter("stream_app_events_rekeyed", "Transactions forwarded to be keyed by card.", registry=r)
        self.alerts = Counter("stream_app_alerts", "Fraud alerts published, by decision.", ["decision"], registry=r)
        self.latency = Histogram("stream_app_end_to_end_latency_seconds",
                                 "From the input's timestamp to the score record being produced.",
                                 ["since"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Counter("stream_app_stage_seconds", "Time spent per pipeline stage.", ["stage"],
                                     registry=r)
        self.batch_size = Histogram("stream_app_batch_size_events", "Events per micro-batch.",
                                    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000), registry=r)
        self.risk = Histogram("stream_app_risk_score", "Distribution of the combined risk score.",
                              buckets=SCORE_BUCKETS, registry=r)
        self.lag = Gauge("stream_app_consumer_lag_messages", "High watermark minus next offset to process.",
                         ["topic", "partition"], registry=r)
        self.model_info = Info("stream_app_model", "Versions of the models serving now.", registry=r)
        self.labels = Counter("stream_app_labels", "Labels by outcome of the join.", ["outcome"], registry=r)
        self.examples_applied = Counter("stream_app_examples_applied",
                                        "Joined examples applied to the online models.", registry=r)
        self.label_lag = Gauge("stream_app_label_to_model_lag_seconds",
                               "From an example's publication to its learning, last example.", registry=r)
        self.quality = Gauge("stream_app_model_quality", "Rolling prequential quality over the last labels.",
                             ["model", "metric"], registry=r)
        self.checkpoint_time = Gauge("stream_app_checkpoint_timestamp_seconds",
                                     "Unix time of the last checkpoint written (age = time() - this).", registry=r)
        self.models_refused = Counter("stream_app_models_refused", "ONNX models refused by validation.", registry=r)
        self.cards = Gauge("stream_app_card_states", "Per-card states held by this process (a door: every card "
                           "of the group).", registry=r)
        self.card_state_bytes = Histogram("stream_app_card_state_bytes", "Size of a card's stored state.",
                                          buckets=(128, 256, 512, 1024, 2048, 4096, 8192), registry=r)
        self.gc_pause = Histogram("stream_app_gc_pause_seconds", "Pauses of Python's garbage collector (the event "
                                  "loop stops meanwhile), by generation.", ["generation"], buckets=GC_PAUSE_BUCKETS,
                                  registry=r)
        self.captured = Gauge("stream_app_captured_features", "Feature vectors waiting for their label.",
                              registry=r)
        self.drift_psi = Gauge("stream_app_drift_psi", "Population stability index against the training data.",
                               ["feature"], registry=r)
        self.drift_detected = Gauge("stream_app_drift_detected", "1 while a feature's drift is detected.",
                                    ["feature"], registry=r)
        self.entity_records = Counter("stream_app_entity_records", "Score records read back by the entity replica, "
                                      "by outcome: applied, own (scored here, folded then), already_applied "
                                      "(at or below an offset applied: a resumed checkpoint), unreadable.",
                                      ["outcome"], registry=r)
        self.entity_lag = Gauge("stream_app_entity_lag_seconds", "From a score record's production to the entity "
                                "replica applying it, last record.", registry=r)
        self.card_replica_lag = Gauge("stream_app_card_replica_lag_seconds", "stream-app door: from a card state "
                                      "change's production to the door's replica applying it, last change.",
                                      registry=r)
        self.entity_profiles = Gauge("stream_app_entity_profiles", "Entity profiles held by the replica.",
                                     registry=r)
        self.rules_updates = Counter("stream_app_rules_updates", "Rule sets read from the rules topic, by outcome "
                                     "(applied, refused: the set serving before stays).", ["outcome"], registry=r)
        self.rules_version = Gauge("stream_app_rules_version", "Version of the rule set serving (0: none yet).",
                                   registry=r)
        self.rule_hits = Counter("stream_app_rule_hits", "Transactions a rule matched, by rule id and mode "
                                 "(enforce, shadow).", ["rule", "mode"], registry=r)
        self.ready = Gauge("stream_app_ready", "1 while the process is ready (GET /ready answers 200), else 0.",
                           registry=r)
        self.score_requests = Counter("stream_app_score_requests", "POST /score requests answered, by HTTP status "
                                      "(not the 401s of the token check).",
                                      ["status"], registry=r)
        self.score_seconds = Histogram("stream_app_score_request_seconds", "POST /score, from the body read to the "
                                       "answer built (parse, features, models; not the wait for the event loop).",
                                       buckets=SCORE_REQUEST_BUCKETS, registry=r)
        self.role = role
        for attribute, owner in ONLY.items():
            if owner != role:
                r.unregister(getattr(self, attribute))

    def snapshot(self) -> dict[str, Any]:
        """Totals for the `worker.stats` log event: every sample of every counter, by name+labels."""
        out: dict[str, Any] = {}
        for metric in self.registry.collect():
            if metric.type != "counter":
                continue
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return out
