"""One frozen settings object, read from the environment in one place (12-factor).

Each field names its environment variable and says what it is for; docs/reference/settings.md is
generated from these fields when the site is built (docs/hooks.py), so the two cannot drift apart.
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
    kafka_security_protocol: str = field(default="PLAINTEXT", metadata=_env(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS)."))
    kafka_ssl_cafile: str = field(default="", metadata=_env(
        "KAFKA_SSL_CAFILE", "PEM file of the CA(s) that signed the brokers' certificates. Empty: the system's CAs."))
    kafka_ssl_certfile: str = field(default="", metadata=_env(
        "KAFKA_SSL_CERTFILE", "Client certificate (PEM) for mutual TLS; needs KAFKA_SSL_KEYFILE."))
    kafka_ssl_keyfile: str = field(default="", metadata=_env(
        "KAFKA_SSL_KEYFILE", "Private key (PEM, unencrypted) of KAFKA_SSL_CERTFILE."))
    kafka_sasl_mechanism: str = field(default="", metadata=_env(
        "KAFKA_SASL_MECHANISM", "With SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."))
    kafka_sasl_username: str = field(default="", metadata=_env(
        "KAFKA_SASL_USERNAME", "SASL user name."))
    kafka_sasl_password: str = field(default="", repr=False, metadata=_env(
        "KAFKA_SASL_PASSWORD", "SASL password (never logged); or use KAFKA_SASL_PASSWORD_FILE."))
    kafka_sasl_password_file: str = field(default="", metadata=_env(
        "KAFKA_SASL_PASSWORD_FILE", "File holding the SASL password (e.g. a mounted Kubernetes Secret)."))
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
        "STREAM_APP_LABELS_TOPIC", "Labeled feedback (fraud / legit), keyed by card_id (other keys are re-keyed)."))
    labels_rekeyed_topic: str = field(default="labels.by-card", metadata=_env(
        "STREAM_APP_LABELS_REKEYED_TOPIC", "Valid labels re-keyed by card_id when a producer used another key."))
    labels_dlq_topic: str = field(default="labels.dlq", metadata=_env(
        "STREAM_APP_LABELS_DLQ_TOPIC", "Dead-letter topic of labels: malformed, or for a tx_id never scored."))
    examples_topic: str = field(default="river-examples", metadata=_env(
        "STREAM_APP_EXAMPLES_TOPIC",
        "Joined examples (features at scoring time + label), one partition: the log every worker learns from."))
    rules_topic: str = field(default="rules", metadata=_env(
        "STREAM_APP_RULES_TOPIC",
        "Rule sets (`stream-app rules publish`), compacted, one partition: every worker reads it all and follows it."))
    rules_audit_topic: str = field(default="rules.audit", metadata=_env(
        "STREAM_APP_RULES_AUDIT_TOPIC",
        "Every rule-set change (who, when, what changed), one partition, kept forever (never compacted)."))
    partitions: int = field(default=4, metadata=_env(
        "STREAM_APP_PARTITIONS", "Partitions of the topics the app creates (input, re-key, outputs, labels)."))
    replication_factor: int = field(default=1, metadata=_env(
        "STREAM_APP_REPLICATION_FACTOR",
        "Replication factor of the topics the app creates, Faust's changelogs included (3 on a production cluster)."))
    max_message_bytes: int = field(default=16384, metadata=_env(
        "STREAM_APP_MAX_MESSAGE_BYTES", "Larger transaction messages are dead-lettered as message_too_large."))
    dlq_original_max_bytes: int = field(default=65536, metadata=_env(
        "STREAM_APP_DLQ_ORIGINAL_MAX_BYTES",
        "A dead-letter record keeps at most this many bytes of the original message (card numbers masked), with "
        "the whole message's size and SHA-256; at most 700000, so a record always fits a 1 MB produce request."))
    delivery_timeout_s: float = field(default=120.0, metadata=_env(
        "STREAM_APP_DELIVERY_TIMEOUT_S",
        "A produced record not confirmed by the broker within this time is a failed write: the worker stops "
        "without acknowledging its input (which is read again after the restart)."))
    shutdown_timeout_s: float = field(default=8.0, metadata=_env(
        "STREAM_APP_SHUTDOWN_TIMEOUT_S",
        "After SIGTERM / SIGINT or a failed write, the worker drains what is in flight for at most this long, "
        "then exits anyway (what was not acknowledged is read again by the next owner)."))
    dedup_horizon_s: int = field(default=7 * 86400, metadata=_env(
        "STREAM_APP_DEDUP_HORIZON_S",
        "Event-time horizon of per-card replay detection; older events are dead-lettered as late_event."))
    batch_size: int = field(default=500, metadata=_env(
        "STREAM_APP_BATCH_SIZE", "Most events scored together in one micro-batch."))
    batch_window_ms: int = field(default=5, metadata=_env(
        "STREAM_APP_BATCH_WINDOW_MS", "Longest wait to fill a micro-batch (bounds added latency)."))
    batch_slice: int = field(default=64, metadata=_env(
        "STREAM_APP_BATCH_SLICE",
        "Events of a micro-batch worked on between two yields to the event loop (~0.1 ms an event), and "
        "records the learner and the entity replica apply between two: bounds how long POST /score waits."))
    max_in_flight_batches: int = field(default=4, metadata=_env(
        "STREAM_APP_MAX_IN_FLIGHT_BATCHES",
        "Micro-batches scored, or labels joined, while earlier ones still wait for the broker's acks "
        "(1: one at a time)."))
    stream_buffer_maxsize: int = field(default=4096, metadata=_env(
        "STREAM_APP_STREAM_BUFFER_MAXSIZE",
        "Events fetched and waiting for the agents (faust's stream buffer). 32768 doubles what the consumer path "
        "alone moves (the runtime floor: ~11k -> ~21k events/s here) but, while the scoring core is the bottleneck, "
        "made the demo's p99 latency twice as long (docs/notes/measurements.md). About 0.5 KB an event."))
    gc_thresholds: str = field(default="700,10,100", metadata=_env(
        "STREAM_APP_GC_THRESHOLDS",
        "Python's garbage collector thresholds for the worker, `gen0,gen1,gen2` (`python`: CPython's 700,10,10): full "
        "collections ten times rarer than CPython's; what start-up built is frozen out of them (worker/collector.py)."))
    fetch_max_wait_ms: int = field(default=10, metadata=_env(
        "STREAM_APP_FETCH_MAX_WAIT_MS", "Longest time the broker may hold the worker's fetch when no data is there."))
    producer_batch_bytes: int = field(default=1_000_000, metadata=_env(
        "STREAM_APP_PRODUCER_BATCH_BYTES",
        "Largest producer batch: a micro-batch's records for one partition fit one batch, so one produce request "
        "carries a micro-batch (faust's 16 KiB cut a batch of 500 labels into ~70 batches, sent one per partition "
        "per request: ~15 round trips). At most the broker's message.max.bytes (Apache Kafka's default: 1 MiB)."))
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
    checkpoint_key: str = field(default="", repr=False, metadata=_env(
        "STREAM_APP_CHECKPOINT_KEY",
        "Secret for the checkpoints' HMAC-SHA256. Empty: plain SHA-256 (detects corruption, not tampering)."))
    pan_key: str = field(default="", repr=False, metadata=_env(
        "STREAM_APP_PAN_KEY",
        "Secret (>= 16 bytes, the same on every worker, kept across restarts) of the HMAC tokens that replace card "
        "ids looking like raw card numbers. Empty: such card ids are dead-lettered as raw_pan."))
    pan_key_file: str = field(default="", metadata=_env(
        "STREAM_APP_PAN_KEY_FILE", "File holding the PAN key (instead of STREAM_APP_PAN_KEY)."))
    entities: str = field(default="merchant:merchant_id", metadata=_env(  # entities.DEFAULT_ENTITIES_TEXT
        "STREAM_APP_ENTITIES",
        "Entities profiled beside the card, name:field, comma-separated; fields: merchant_id, device_id, ip, "
        "email_hash (personal ids are kept as keyed digests). The same on every worker and at training: a model "
        "trained on other entities is refused."))
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
    http_token: str = field(default="", repr=False, metadata=_env(
        "STREAM_APP_HTTP_TOKEN",
        "Bearer token required by the HTTP pages except /health and /ready (never logged). Empty: no auth."))
    http_token_file: str = field(default="", metadata=_env(
        "STREAM_APP_HTTP_TOKEN_FILE", "File holding the HTTP bearer token (instead of STREAM_APP_HTTP_TOKEN)."))
    metrics_public: bool = field(default=False, metadata=_env(
        "STREAM_APP_METRICS_PUBLIC",
        "true: GET /metrics answers without the bearer token (a scraper on a trusted network)."))
    data_dir: str = field(default=".stream-app", metadata=_env(
        "STREAM_APP_DATA_DIR", "Worker data directory (Faust's datadir)."))
    session_timeout_s: float = field(default=6.0, metadata=_env(
        "STREAM_APP_SESSION_TIMEOUT_S", "Consumer group session timeout; short means fast fail-over."))
    fetch_verified_offsets: bool = field(default=True, metadata=_env(
        "STREAM_APP_FETCH_VERIFIED_OFFSETS",
        "true: stream_app's Faust transport (end offsets confirmed by a fetch before table recovery, needed "
        "on Tansu; the seek after a rebalance that loses no record; a cheaper fetch loop). false: Faust's stock "
        "aiokafka driver, without those fixes (for comparison only)."))
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

    def gc_threshold_values(self) -> tuple[int, int, int] | None:
        return parse_gc_thresholds(self.gc_thresholds)

    def __post_init__(self) -> None:
        if not 0 <= self.review_threshold <= self.decline_threshold <= 1:
            raise ValueError("need 0 <= review_threshold <= decline_threshold <= 1")
        if self.partitions < 1 or self.batch_size < 1 or self.max_in_flight_batches < 1 or self.batch_slice < 1 \
                or self.stream_buffer_maxsize < 1 or self.producer_batch_bytes < 1:
            raise ValueError("partitions, batch_size, batch_slice, max_in_flight_batches, stream_buffer_maxsize and "
                             "producer_batch_bytes must be >= 1")
        self.gc_threshold_values()  # refuses a malformed value at start, not when the worker applies it
        if self.combiner not in {"weighted", "stacked"}:
            raise ValueError("combiner must be weighted or stacked")
        if not 0 <= self.river_max_weight <= 1:
            raise ValueError("river_max_weight must be in [0, 1]")
        _check_kafka_security(self)
        if not 0 <= self.dlq_original_max_bytes <= DLQ_ORIGINAL_LIMIT:
            raise ValueError(f"STREAM_APP_DLQ_ORIGINAL_MAX_BYTES must be in [0, {DLQ_ORIGINAL_LIMIT}]")
        if self.delivery_timeout_s <= 0 or self.shutdown_timeout_s <= 0:
            raise ValueError("STREAM_APP_DELIVERY_TIMEOUT_S and STREAM_APP_SHUTDOWN_TIMEOUT_S must be > 0")
        if self.replication_factor < 1:
            raise ValueError("STREAM_APP_REPLICATION_FACTOR must be >= 1")
        if self.http_token and self.http_token_file:
            raise ValueError("set STREAM_APP_HTTP_TOKEN or STREAM_APP_HTTP_TOKEN_FILE, not both")
        if self.pan_key and self.pan_key_file:
            raise ValueError("set STREAM_APP_PAN_KEY or STREAM_APP_PAN_KEY_FILE, not both")
        if self.pan_key and len(self.pan_key.encode()) < 16:
            raise ValueError("STREAM_APP_PAN_KEY must be at least 16 bytes")
        from stream_app.domain.entities import parse_entities  # the one parser of the declaration

        try:
            parse_entities(self.entities)
        except ValueError as exc:
            raise ValueError(f"STREAM_APP_ENTITIES: {exc}") from None


#: Largest original prefix kept in a dead-letter record: base64 (4/3) plus the record around it stays
#: below the producer's default request limit (1,000,000 bytes).
DLQ_ORIGINAL_LIMIT = 700_000
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _check_kafka_security(s: Settings) -> None:
    """Combinations that cannot work are refused at start, naming the variables to fix.

    Files are not opened here (stream_app.kafka.security reads them when it builds the clients)."""
    protocol = s.kafka_security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}")
    tls = protocol in {"SSL", "SASL_SSL"}
    sasl = protocol.startswith("SASL_")
    tls_files = {"KAFKA_SSL_CAFILE": s.kafka_ssl_cafile, "KAFKA_SSL_CERTFILE": s.kafka_ssl_certfile,
                 "KAFKA_SSL_KEYFILE": s.kafka_ssl_keyfile}
    if not tls and any(tls_files.values()):
        named = ", ".join(name for name, value in tls_files.items() if value)
        raise ValueError(f"{named} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                         "(use SSL or SASL_SSL)")
    if bool(s.kafka_ssl_certfile) != bool(s.kafka_ssl_keyfile):
        raise ValueError("mutual TLS needs both KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE")
    sasl_values = {"KAFKA_SASL_MECHANISM": s.kafka_sasl_mechanism, "KAFKA_SASL_USERNAME": s.kafka_sasl_username,
                   "KAFKA_SASL_PASSWORD": s.kafka_sasl_password,
                   "KAFKA_SASL_PASSWORD_FILE": s.kafka_sasl_password_file}
    if not sasl:
        if any(sasl_values.values()):
            named = ", ".join(name for name, value in sasl_values.items() if value)
            raise ValueError(f"{named} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL "
                             "(use SASL_PLAINTEXT or SASL_SSL)")
        return
    if s.kafka_sasl_mechanism not in SASL_MECHANISMS:
        raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM, one of "
                         f"{', '.join(SASL_MECHANISMS)} (got {s.kafka_sasl_mechanism!r})")
    if not s.kafka_sasl_username:
        raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME")
    if bool(s.kafka_sasl_password) == bool(s.kafka_sasl_password_file):
        raise ValueError("SASL needs exactly one of KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE")


def parse_gc_thresholds(text: str) -> tuple[int, int, int] | None:
    """``"gen0,gen1,gen2"`` as ``gc.set_threshold`` takes them; ``"python"``: None (CPython's own)."""
    if text.strip() == "python":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) < 1:
        raise ValueError(f"STREAM_APP_GC_THRESHOLDS must be 'gen0,gen1,gen2' (integers, gen0 >= 1) or 'python', "
                         f"not {text!r}")
    first, second, third = (int(p) for p in parts)
    return first, second, third


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
    """(variable, default, description) rows, for docs/reference/settings.md and `--help`."""
    defaults = Settings()
    return [(f.metadata["env"], str(getattr(defaults, f.name)), f.metadata["doc"]) for f in fields(Settings)]
