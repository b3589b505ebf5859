"""One frozen settings object, read from the environment in one place (12-factor).

Each field names its environment variable and says what it is for; README's configuration table is
checked against these fields by a test, so the two cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


def _env(name: str, doc: str) -> dict[str, Any]:
    return {"env": name, "doc": doc}


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap_servers: str = field(
        default="", metadata=_env("KAFKA_BOOTSTRAP_SERVERS",
                                  "Kafka bootstrap servers (host:port,...). Empty: `demo` starts the embedded broker."))
    app_id: str = field(default="stream-app", metadata=_env(
        "STREAM_APP_ID", "Faust app id: consumer group and prefix of changelog topics."))
    transactions_topic: str = field(default="transactions", metadata=_env(
        "STREAM_APP_TRANSACTIONS_TOPIC", "Input topic of transaction events."))
    rekeyed_topic: str = field(default="transactions.by-card", metadata=_env(
        "STREAM_APP_REKEYED_TOPIC", "Valid transactions re-keyed by card_id when a producer used another key."))
    dlq_topic: str = field(default="transactions.dlq", metadata=_env(
        "STREAM_APP_DLQ_TOPIC", "Dead-letter topic: original bytes, reason, topic/partition/offset."))
    scores_topic: str = field(default="scores", metadata=_env(
        "STREAM_APP_SCORES_TOPIC", "One decision record per transaction, keyed by tx_id."))
    alerts_topic: str = field(default="fraud-alerts", metadata=_env(
        "STREAM_APP_ALERTS_TOPIC", "One alert per risky transaction, keyed by card_id."))
    labels_topic: str = field(default="labels", metadata=_env(
        "STREAM_APP_LABELS_TOPIC", "Labeled feedback (fraud / legit), keyed by tx_id."))
    labels_dlq_topic: str = field(default="labels.dlq", metadata=_env(
        "STREAM_APP_LABELS_DLQ_TOPIC", "Dead-letter topic of labels: malformed, or for a tx_id never scored."))
    examples_topic: str = field(default="river-examples", metadata=_env(
        "STREAM_APP_EXAMPLES_TOPIC",
        "Joined examples (features at scoring time + label), one partition: the log every worker learns from."))
    partitions: int = field(default=4, metadata=_env(
        "STREAM_APP_PARTITIONS", "Partitions of the topics the app creates (input, re-key, outputs, labels)."))
    max_message_bytes: int = field(default=16384, metadata=_env(
        "STREAM_APP_MAX_MESSAGE_BYTES", "Larger transaction messages are dead-lettered as message_too_large."))
    dedup_horizon_s: int = field(default=7 * 86400, metadata=_env(
        "STREAM_APP_DEDUP_HORIZON_S",
        "Event-time horizon of per-card replay detection; older events are dead-lettered as late_event."))
    batch_size: int = field(default=500, metadata=_env(
        "STREAM_APP_BATCH_SIZE", "Most events scored together in one micro-batch."))
    batch_window_ms: int = field(default=5, metadata=_env(
        "STREAM_APP_BATCH_WINDOW_MS", "Longest wait to fill a micro-batch (bounds added latency)."))
    fetch_max_wait_ms: int = field(default=10, metadata=_env(
        "STREAM_APP_FETCH_MAX_WAIT_MS", "Longest time the broker may hold the worker's fetch when no data is there."))
    review_threshold: float = field(default=0.3, metadata=_env(
        "STREAM_APP_REVIEW_THRESHOLD", "Combined risk at or above this: decision `review` and an alert."))
    decline_threshold: float = field(default=0.8, metadata=_env(
        "STREAM_APP_DECLINE_THRESHOLD", "Combined risk at or above this: decision `decline` and an alert."))
    river_max_weight: float = field(default=0.1, metadata=_env(
        "STREAM_APP_RIVER_MAX_WEIGHT", "Largest weight of the River score in the combined risk."))
    river_warmup_labels: int = field(default=2000, metadata=_env(
        "STREAM_APP_RIVER_WARMUP_LABELS",
        "Labels the River model must learn before its weight reaches STREAM_APP_RIVER_MAX_WEIGHT."))
    river_learning: bool = field(default=True, metadata=_env(
        "STREAM_APP_RIVER_LEARNING", "false: the River model is frozen (it still scores), e.g. for a baseline."))
    combiner: str = field(default="stacked", metadata=_env(
        "STREAM_APP_COMBINER",
        "weighted: the fixed policy; stacked: an online model learns how to combine the scores (after warm-up)."))
    stacker_warmup_labels: int = field(default=2000, metadata=_env(
        "STREAM_APP_STACKER_WARMUP_LABELS", "Labels the stacked combiner learns before it decides."))
    feature_retention_s: int = field(default=30 * 86400, metadata=_env(
        "STREAM_APP_FEATURE_RETENTION_S", "How long the feature vector of a scored transaction waits for its label."))
    label_wait_s: float = field(default=3600.0, metadata=_env(
        "STREAM_APP_LABEL_WAIT_S",
        "A label whose transaction has no score record yet waits this long, then is dead-lettered as unknown_tx."))
    checkpoint_interval_s: float = field(default=30.0, metadata=_env(
        "STREAM_APP_CHECKPOINT_INTERVAL_S", "Seconds between checkpoints of the online models (also at shutdown)."))
    checkpoint_key: str = field(default="", metadata=_env(
        "STREAM_APP_CHECKPOINT_KEY",
        "Secret for the checkpoints' HMAC-SHA256. Empty: plain SHA-256 (detects corruption, not tampering)."))
    quality_window: int = field(default=5000, metadata=_env(
        "STREAM_APP_QUALITY_WINDOW", "Labels in the rolling (prequential) quality metrics."))
    drift_window: int = field(default=5000, metadata=_env(
        "STREAM_APP_DRIFT_WINDOW", "Recent transactions compared with the training distribution for drift."))
    drift_psi: float = field(default=0.2, metadata=_env(
        "STREAM_APP_DRIFT_PSI", "Population stability index above which a feature's drift is reported."))
    model_watch_path: str = field(default="", metadata=_env(
        "STREAM_APP_MODEL_WATCH_PATH",
        "A directory or .onnx file watched for a new ONNX model (with its card); validated, then hot-swapped."))
    model_poll_s: float = field(default=5.0, metadata=_env(
        "STREAM_APP_MODEL_POLL_S", "Seconds between looks at STREAM_APP_MODEL_WATCH_PATH."))
    challenger_model_path: str = field(default="", metadata=_env(
        "STREAM_APP_CHALLENGER_MODEL", "ONNX challenger scored in shadow: recorded in `scores`, never decides."))
    onnx_model_path: str = field(default="", metadata=_env(
        "STREAM_APP_ONNX_MODEL", "ONNX model file; empty: the model shipped in the package."))
    web_host: str = field(default="127.0.0.1", metadata=_env(
        "STREAM_APP_WEB_HOST", "Address the worker's web server binds to (loopback by default)."))
    web_port: int = field(default=6066, metadata=_env(
        "STREAM_APP_WEB_PORT", "Port of the worker's web server."))
    data_dir: str = field(default=".stream-app", metadata=_env(
        "STREAM_APP_DATA_DIR", "Worker data directory (Faust's datadir)."))
    session_timeout_s: float = field(default=6.0, metadata=_env(
        "STREAM_APP_SESSION_TIMEOUT_S", "Consumer group session timeout; short means fast fail-over."))
    fetch_verified_offsets: bool = field(default=True, metadata=_env(
        "STREAM_APP_FETCH_VERIFIED_OFFSETS",
        "Confirm end offsets with a fetch before table recovery (needed on Tansu, harmless on Kafka)."))
    log_level: str = field(default="info", metadata=_env(
        "STREAM_APP_LOG_LEVEL", "Log level: debug, info, warning, error."))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        return replace(cls(**values), **overrides)

    def __post_init__(self) -> None:
        if not 0 <= self.review_threshold <= self.decline_threshold <= 1:
            raise ValueError("need 0 <= review_threshold <= decline_threshold <= 1")
        if self.partitions < 1 or self.batch_size < 1:
            raise ValueError("partitions and batch_size must be >= 1")
        if self.combiner not in {"weighted", "stacked"}:
            raise ValueError("combiner must be weighted or stacked")
        if not 0 <= self.river_max_weight <= 1:
            raise ValueError("river_max_weight must be in [0, 1]")


def _coerce(name: str, type_name: Any, raw: str) -> Any:
    kind = type_name if isinstance(type_name, str) else type_name.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
    except ValueError:
        raise ValueError(f"setting {name}: cannot read {raw!r} as {kind}") from None
    return raw


def env_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) rows, for README and `--help`."""
    defaults = Settings()
    return [(f.metadata["env"], str(getattr(defaults, f.name)), f.metadata["doc"]) for f in fields(Settings)]
