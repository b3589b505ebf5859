"""Offline training of the ONNX model, with a temporal protocol.

The history is either generated (``stream_app.devtools.generator``) or a user's labeled transactions
(``TrainConfig.data_path``, CSV or Parquet, see :func:`load_labeled_transactions`). Either way it is
replayed with its labels in arrival order through the serving code (:mod:`stream_app.offline.replay`).
The split is by time: train on the first period, skip a gap as long as the label delay (those labels would not be known
yet when training), test on the period after. The model is exported to ONNX with a model card that
records what it was trained on, how it scored, the sha256 of the file, and a precision-recall curve
of the test period (``fraud_gbt.pr.png``).

A model already in the output directory is only replaced by a model that is not worse: both are
scored on this run's test period, and a new average precision lower than the current one by more
than ``TrainConfig.ap_tolerance`` is refused (:class:`ModelRefused`, nothing written) unless
``TrainConfig.force``. New files are written to a temporary directory first and moved into place
only when accepted.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from stream_app.devtools.generator import GeneratorConfig
from stream_app.domain.drift import reference_from_rows
from stream_app.domain.entities import DEFAULT_ENTITIES_TEXT, EntityTable, FeatureSet
from stream_app.domain.events import InvalidEvent, Transaction, format_ts, parse_ts, transaction_from_dict
from stream_app.domain.features import DAY_MS
from stream_app.models.onnx_model import PACKAGED_MODEL, card_path, packaged_model_path, sha256_file
from stream_app.offline.evaluation import average_precision, precision_top_k_cards_per_day, roc_auc
from stream_app.offline.replay import Dataset, build_dataset, replay

#: The transaction fields a data file must provide (see ``stream_app.domain.events.transaction_from_dict``).
#: Optional transaction fields read when the file has them (entities can be declared on them).
OPTIONAL_FIELDS: Final[tuple[str, ...]] = ("device_id", "ip", "email_hash")
TX_FIELDS: Final[tuple[str, ...]] = ("tx_id", "card_id", "merchant_id", "amount", "currency", "timestamp",
                                     "country", "channel", "mcc")
DEFAULT_LABEL_COLUMN: Final = "is_fraud"
#: Optional column: when the label became known (RFC 3339 or epoch ms, not before the transaction). Without
#: it (or where empty), a label is taken to arrive ``--label-delay-days`` after its transaction.
LABEL_TIME_COLUMN: Final = "label_time"
#: Accepted label values (text is compared case-insensitively, surrounding spaces ignored).
LABEL_TEXT: Final[dict[str, bool]] = {"1": True, "0": False, "true": True, "false": False,
                                      "fraud": True, "legit": False}
REJECTS_FILE: Final = "training_rejects.jsonl"
PR_CURVE_SUFFIX: Final = ".pr.png"
EDGE_MODEL: Final = "fraud_gbt_edge.onnx"  # in <output>/edge/: a watched directory serves its newest *.onnx
DEFAULT_AP_TOLERANCE: Final = 0.005
_INT_RE = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int = 7
    n_customers: int = 3000
    days: int = 60  # generated history only; with data_path the data's own span is used
    label_delay_days: int = 7
    test_days: int = 14
    n_estimators: int = 150
    top_k_cards: int = 20
    output_dir: str | None = None
    dedup_horizon_s: int = 7 * 86400
    data_path: str | None = None  # CSV or Parquet of labeled transactions instead of generated history
    columns: Mapping[str, str] | None = None  # transaction field -> column name in the file
    label_column: str = DEFAULT_LABEL_COLUMN
    force: bool = False  # replace the current model even when the new one is worse
    ap_tolerance: float = DEFAULT_AP_TOLERANCE
    review_threshold: float = 0.3  # operating point marked on the PR curve
    edge_trees: int = 0  # >0: also export a small "edge" model (this many trees of depth edge_max_depth)
    all_history: bool = False  # after the held-out evaluation, refit on every row whose label is mature
    entities: str = DEFAULT_ENTITIES_TEXT  # STREAM_APP_ENTITIES: the feature set, as the workers declare it

    @property
    def features(self) -> FeatureSet:
        return FeatureSet.parse(self.entities)
    edge_max_depth: int = 4


class ModelRefused(RuntimeError):
    """The new model scored worse than the current one on the same test rows; nothing was written."""

    def __init__(self, message: str, comparison: dict[str, Any], card: dict[str, Any]) -> None:
        super().__init__(message)
        self.comparison = comparison
        self.card = card


# ------------------------------------------------------------------------------ user data files

@dataclass
class LabeledData:
    """Valid labeled transactions of a data file, sorted by event time, and what was rejected."""

    path: Path
    format: str  # "csv" or "parquet"
    columns: dict[str, str]  # transaction field -> column
    label_column: str
    rows_read: int
    items: list[tuple[Transaction, bool]]
    row_numbers: list[int]  # 1-based data row of each item (header not counted)
    label_times: list[int | None]  # the label_time column's value per item (None: absent or empty)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def reject_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r["reason"] for r in self.rejects).items()))


def resolve_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """The required fields' field -> column mapping: every field maps to its own name unless overridden."""
    overrides = dict(columns or {})
    unknown = sorted(set(overrides) - set(TX_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"unknown transaction field(s) {unknown} in the column mapping; fields are "
                         f"{', '.join(TX_FIELDS + OPTIONAL_FIELDS)} (the label column is set with --label-column)")
    return {name: overrides.get(name, name) for name in TX_FIELDS}


def optional_columns(columns: Mapping[str, str] | None, header: list[str]) -> dict[str, str]:
    """The optional fields (entity ids) the file has: field -> column, mapped like the required ones."""
    overrides = dict(columns or {})
    return {name: overrides.get(name, name) for name in OPTIONAL_FIELDS if overrides.get(name, name) in header}


def _data_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return "parquet"
    return "csv"


@contextmanager
def _open_rows(path: Path, fmt: str, wanted: list[str]) -> Iterator[tuple[list[str], Iterator[dict[str, Any]]]]:
    """The file's column names and an iterator over its rows (dicts keyed by column)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        header = list(parquet.schema_arrow.names)
        present = [c for c in dict.fromkeys(wanted) if c in header]

        def batches() -> Iterator[dict[str, Any]]:
            for batch in parquet.iter_batches(columns=present, batch_size=65_536):
                yield from batch.to_pylist()

        try:
            yield header, batches()
        finally:
            parquet.close()
        return
    opener: Callable[..., Any] = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)

        def rows() -> Iterator[dict[str, Any]]:
            try:
                yield from reader
            except csv.Error as exc:
                raise ValueError(f"{path}: unreadable CSV at line {reader.line_num}: {exc}") from None

        try:
            header = list(reader.fieldnames or [])
        except csv.Error as exc:
            raise ValueError(f"{path}: unreadable CSV header: {exc}") from None
        yield header, rows()


def _coerce(name: str, value: Any) -> Any:
    """A file's value as ``transaction_from_dict`` expects it; what cannot be read is passed on as it
    is, so the parser rejects it with its own reason."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
        if name == "amount":
            try:
                return float(value)
            except ValueError:
                return value
        if name == "timestamp" and _INT_RE.match(value):
            return int(value)
        return value
    if isinstance(value, datetime):
        return value.isoformat()  # a naive datetime stays naive: the parser refuses it (needs an offset)
    if isinstance(value, date):
        return value.isoformat()
    if name == "amount" and not isinstance(value, bool) and hasattr(value, "as_integer_ratio"):
        return float(value)  # Decimal, numpy scalars
    if name == "mcc" and isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9999:
        return f"{value:04d}"  # an integer column drops the leading zeros of codes like 0742
    if name in ("tx_id", "card_id", "merchant_id") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def parse_label_value(value: Any) -> bool | None:
    """1/0, true/false (bool or text), "fraud"/"legit" (any case) -> bool; anything else -> None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in LABEL_TEXT:
            return LABEL_TEXT[text]
        if text in ("1.0", "0.0"):
            return text == "1.0"
    return None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def load_labeled_transactions(path: str | Path, columns: Mapping[str, str] | None = None,
                              label_column: str = DEFAULT_LABEL_COLUMN) -> LabeledData:
    """Read labeled transactions from a CSV (``.csv``, ``.csv.gz``, any other name) or Parquet
    (``.parquet``, ``.pq``) file, validate every row and sort the valid ones by event time.

    Columns, one row per transaction (extra columns are ignored):

    ============  ==========================================================================
    tx_id         unique id, ``[A-Za-z0-9_.:-]{1,64}``
    card_id       card token (same format), never a raw card number
    merchant_id   merchant id (same format)
    amount        number > 0, in ``currency``
    currency      ISO 4217 code known to ``stream_app.domain.events.EUR_RATES``
    timestamp     event time: RFC 3339 with an offset (``2026-01-03T02:10:00Z``) or epoch
                  milliseconds; in Parquet also a timezone-aware timestamp column
    country       ISO 3166-1 alpha-2 of the merchant (``FR``)
    channel       ``pos``, ``ecom``, ``atm`` or ``moto``
    mcc           4-digit merchant category code (an integer column is zero-padded: 742 -> 0742)
    is_fraud      the label: 1/0, true/false, fraud/legit (case-insensitive)
    ============  ==========================================================================

    ``columns`` maps a transaction field to the file's column when the names differ
    (``{"amount": "amt"}``; CLI ``--column amount=amt``, repeatable); ``label_column`` names the
    label column (CLI ``--label-column``, default ``is_fraud``). A required column missing from the
    file is an error (``ValueError``). Each row goes through ``transaction_from_dict``, the stream's
    own validation: an invalid row is not silently dropped but kept in ``rejects`` with the parser's
    reason (``missing_field``, ``wrong_type``, ``invalid_value``, ``unknown_currency``),
    ``missing_label`` / ``invalid_label``, or ``duplicate`` (a tx_id seen on an earlier row), its
    1-based data row number and its values. Rows are
    sorted by event time (file order among equal times) so they can be replayed exactly like
    generated history.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such data file: {path}")
    mapping = resolve_columns(columns)
    fmt = _data_format(path)
    wanted = [*mapping.values(), label_column]
    keyed: list[tuple[int, int, Transaction, bool, int | None]] = []
    rejects: list[dict[str, Any]] = []
    first_row: dict[str, int] = {}  # tx_id -> the row it was first seen on
    n = 0
    maybe = [LABEL_TIME_COLUMN, *(dict(columns or {}).get(f, f) for f in OPTIONAL_FIELDS)]
    with _open_rows(path, fmt, [*wanted, *maybe]) as (header, rows):
        missing = [c for c in dict.fromkeys(wanted) if c not in header]
        optional = optional_columns(columns, header)
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {missing}; the file has {header}. "
                             f"Map fields to columns with --column FIELD=COLUMN and --label-column NAME.")
        for n, raw in enumerate(rows, start=1):
            obj = {name: _coerce(name, raw.get(column)) for name, column in (mapping | optional).items()}
            record = {column: _jsonable(raw.get(column)) for column in dict.fromkeys(wanted)}
            try:
                tx = transaction_from_dict(obj)
            except InvalidEvent as exc:
                rejects.append({"row": n, "reason": exc.reason, "field": exc.field,
                                "column": mapping.get(exc.field or "", exc.field), "detail": exc.detail,
                                "record": record})
                continue
            label = parse_label_value(raw.get(label_column))
            if label is None:
                empty = raw.get(label_column) is None or str(raw.get(label_column)).strip() == ""
                rejects.append({"row": n, "reason": "missing_label" if empty else "invalid_label",
                                "field": "label", "column": label_column,
                                "detail": "label must be one of 1/0, true/false, fraud/legit", "record": record})
                continue
            label_time = _label_time(raw.get(LABEL_TIME_COLUMN), tx.ts_ms)
            if label_time == -1:
                rejects.append({"row": n, "reason": "invalid_label_time", "field": "label_time",
                                "column": LABEL_TIME_COLUMN, "detail": "label_time must be a timestamp (RFC 3339 "
                                "or epoch ms) not before the transaction's", "record": record})
                continue
            if tx.tx_id in first_row:
                rejects.append({"row": n, "reason": "duplicate", "field": "tx_id", "column": mapping["tx_id"],
                                "detail": f"tx_id already on row {first_row[tx.tx_id]}", "record": record})
                continue
            first_row[tx.tx_id] = n
            keyed.append((tx.ts_ms, n, tx, label, label_time))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return LabeledData(path=path, format=fmt, columns=mapping, label_column=label_column, rows_read=n,
                       items=[(k[2], k[3]) for k in keyed], row_numbers=[k[1] for k in keyed],
                       label_times=[k[4] for k in keyed], rejects=rejects)


def _label_time(value: Any, tx_ts_ms: int) -> int | None:
    """A row's label_time in epoch ms; None when absent or empty, -1 when unreadable or before ``tx_ts_ms``."""
    value = _coerce("timestamp", value)
    if value is None or value == "":
        return None
    try:
        at = parse_ts(value, LABEL_TIME_COLUMN)
    except InvalidEvent:
        return -1
    return at if at >= tx_ts_ms else -1


def _sha256_stream(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------- metrics

def evaluate(y: np.ndarray, scores: np.ndarray, ts_ms: np.ndarray, cards: np.ndarray, k: int) -> dict[str, float]:
    return {
        "rows": int(len(y)),
        "frauds": int(y.sum()),
        "roc_auc": roc_auc(y, scores),
        "average_precision": average_precision(y, scores),
        f"precision_top_{k}_cards_per_day": precision_top_k_cards_per_day(ts_ms // DAY_MS, cards, y, scores, k),
    }


def precision_recall_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) when flagging every score >= threshold, one point per
    distinct score, thresholds from high to low."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    s, hits = s[order], y[order]
    tp = np.cumsum(hits)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    return tp[last] / (last + 1), tp[last] / max(int(tp[-1]), 1), s[last]


def operating_point(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """What flagging every score >= threshold gives; precision None when nothing is flagged."""
    flagged = np.asarray(scores) >= threshold
    y = np.asarray(y, dtype=bool)
    tp = int((flagged & y).sum())
    return {"threshold": threshold, "flagged": int(flagged.sum()), "true_positives": tp,
            "precision": tp / int(flagged.sum()) if flagged.any() else None,
            "recall": tp / int(y.sum()) if y.any() else None}


def plot_pr_curve(path: Path, y: np.ndarray, scores: np.ndarray, label: str, threshold: float,
                  title: str, previous: tuple[np.ndarray, str] | None = None) -> dict[str, float | int | None]:
    """Write the precision-recall curve of ``scores`` as a PNG (matplotlib, Agg canvas, no pyplot
    state), with the AP in the legend and the operating point at ``threshold`` marked; ``previous``
    (scores, label) adds the current model's curve on the same rows. Returns the operating point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    curves = [(scores, label, "-", "C0")]
    if previous is not None:
        curves.append((previous[0], previous[1], "--", "C1"))
    for s, name, style, colour in curves:
        precision, recall, _ = precision_recall_points(y, s)
        # steps-pre: each recall interval gets the precision at its right end, the area AP sums
        ax.plot(np.r_[0.0, recall], np.r_[precision[0], precision], linestyle=style, color=colour,
                drawstyle="steps-pre", label=f"{name} (AP = {average_precision(y, s):.4f})")
    point = operating_point(y, scores, threshold)
    if point["flagged"]:
        ax.plot([point["recall"] or 0.0], [point["precision"] or 0.0], "o", color="C3", markersize=8,
                label=f"score >= {threshold:g} (review): precision {point['precision']:.3f}, "
                      f"recall {point['recall']:.3f}")
    else:
        ax.plot([], [], "o", color="C3", label=f"score >= {threshold:g} (review): no transaction flagged")
    prevalence = float(np.mean(y))
    ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1,
               label=f"fraud share {prevalence:.4f} (random ranking)")
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.02), xlabel="recall (share of frauds flagged)",
           ylabel="precision (share of flagged that are fraud)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return point


def feature_stats(x: np.ndarray, y: np.ndarray, importance: np.ndarray, names: tuple[str, ...]
                  ) -> dict[str, dict[str, float]]:
    legit, fraud = x[y == 0], x[y == 1]
    share = importance / importance.sum() if importance.sum() > 0 else importance
    return {
        name: {
            "legit_mean": float(legit[:, i].mean()),
            "legit_std": float(legit[:, i].std()),
            "fraud_mean": float(fraud[:, i].mean()) if len(fraud) else 0.0,
            "importance": float(share[i]),
        }
        for i, name in enumerate(names)
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _command(cfg: TrainConfig) -> str:
    parts = ["stream-app", "train"]
    if cfg.data_path:
        parts += ["--data", cfg.data_path]
        for name, column in sorted((cfg.columns or {}).items()):
            if column != name:
                parts += ["--column", f"{name}={column}"]
        if cfg.label_column != DEFAULT_LABEL_COLUMN:
            parts += ["--label-column", cfg.label_column]
    else:
        parts += ["--days", str(cfg.days), "--customers", str(cfg.n_customers)]
    parts += ["--trees", str(cfg.n_estimators), "--seed", str(cfg.seed)]
    if (cfg.label_delay_days, cfg.test_days) != (7, 14):
        parts += ["--label-delay-days", str(cfg.label_delay_days), "--test-days", str(cfg.test_days)]
    if cfg.edge_trees:
        parts += ["--edge-trees", str(cfg.edge_trees)]
    if cfg.force:
        parts.append("--force")
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------------------- the current model

def compare_with_current(model_path: Path, x: np.ndarray, y: np.ndarray, new_scores: np.ndarray,
                         cfg: TrainConfig) -> tuple[dict[str, Any], np.ndarray | None]:
    """Score the model now at ``model_path`` on the same test rows and decide whether the new model
    may replace it. Returns the decision record (for the card) and the current model's scores."""
    from stream_app.models.onnx_model import OnnxScorer

    new_ap = average_precision(y, new_scores)
    record: dict[str, Any] = {"decision": "first_model", "new_average_precision": new_ap,
                              "current_average_precision": None, "tolerance": cfg.ap_tolerance,
                              "forced": cfg.force, "current": None,
                              "compared_on": {"rows": int(len(y)), "frauds": int(y.sum()),
                                              "period": "this run's test period"}}
    if not model_path.exists() and not card_path(model_path).exists():
        return record, None
    try:
        current = OnnxScorer.load(model_path, cfg.features)
        current_scores = np.asarray(current.predict_proba_many(x.tolist()), dtype=float)
    except Exception as exc:  # noqa: BLE001 - a model that cannot load cannot serve either
        record["decision"] = "current_unloadable"
        record["current"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"warning: the current model {model_path} cannot be loaded ({exc}); replacing it",
              file=sys.stderr)
        return record, None
    current_ap = average_precision(y, current_scores)
    record["current_average_precision"] = current_ap
    record["ap_difference"] = new_ap - current_ap
    record["current"] = {"version": current.version, "sha256": current.card.get("sha256"),
                         "roc_auc": roc_auc(y, current_scores)}
    if new_ap >= current_ap - cfg.ap_tolerance:
        record["decision"] = "accepted"
    else:
        record["decision"] = "forced" if cfg.force else "refused"
    return record, current_scores


# -------------------------------------------------------------------------------------- training

def _new_classifier(cfg: TrainConfig, n_estimators: int, **overrides: Any) -> Any:
    import lightgbm as lgb

    params: dict[str, Any] = dict(
        n_estimators=n_estimators, learning_rate=0.05, num_leaves=31, min_child_samples=50,
        subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=cfg.seed,
        deterministic=True, force_row_wise=True, n_jobs=2, verbose=-1)
    params.update(overrides)
    return lgb.LGBMClassifier(**params)


def _to_onnx(model: Any, path: Path, width: int) -> None:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = onnxmltools.convert_lightgbm(
        model, initial_types=[("features", FloatTensorType([None, width]))],
        zipmap=False, target_opset=15)
    path.write_bytes(onnx_model.SerializeToString())


def _load_user_data(cfg: TrainConfig, out_dir: Path, horizon_ms: int) -> tuple[Dataset, dict[str, Any], int, int]:
    """Read, validate, replay a data file; write the rejects. Returns data, card info, start, days."""
    assert cfg.data_path is not None
    print(f"reading {cfg.data_path} ...", file=sys.stderr)
    loaded = load_labeled_transactions(cfg.data_path, cfg.columns, cfg.label_column)

    def on_invalid(index: int, exc: InvalidEvent) -> None:
        tx = loaded.items[index][0]
        loaded.rejects.append({"row": loaded.row_numbers[index], "reason": exc.reason, "field": exc.field,
                               "column": loaded.columns.get(exc.field or "", exc.field), "detail": exc.detail,
                               "record": {**tx.to_json_dict(), loaded.label_column: loaded.items[index][1]}})

    data = replay(loaded.items, horizon_ms, cfg.label_delay_days * DAY_MS, loaded.label_times, on_invalid=on_invalid,
                  table=EntityTable(cfg.features.specs))
    loaded.rejects.sort(key=lambda r: r["row"])
    rejects_path = out_dir / REJECTS_FILE
    with rejects_path.open("w") as handle:
        for reject in loaded.rejects:
            handle.write(json.dumps(reject, default=str) + "\n")
    counts = loaded.reject_counts()
    print(f"{loaded.rows_read:,} rows read, {len(data.y):,} used, {len(loaded.rejects):,} rejected"
          + (f" ({', '.join(f'{r}={c}' for r, c in counts.items())}) -> {rejects_path}" if counts else ""),
          file=sys.stderr, flush=True)
    if len(data.y) == 0:
        raise ValueError(f"{loaded.path.name}: no valid rows (see {rejects_path})")
    start = int(data.ts_ms.min()) // DAY_MS * DAY_MS
    days = -(-(int(data.ts_ms.max()) + 1 - start) // DAY_MS)
    info = {
        "source": "file",
        "path": str(loaded.path.resolve()),
        "sha256": _sha256_stream(loaded.path),
        "format": loaded.format,
        "columns": loaded.columns,
        "label_column": loaded.label_column,
        "rows_read": loaded.rows_read,
        "rows_used": int(len(data.y)),
        "rejected": counts,
        "rejects_file": REJECTS_FILE,
        "first_event": format_ts(int(data.ts_ms.min())),
        "last_event": format_ts(int(data.ts_ms.max())),
    }
    return data, info, start, days


def train_and_export(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate on the later test period, export ONNX + card + PR curve into the output
    directory, unless the model already there does better on the same test rows.

    Raises :class:`ModelRefused` (nothing written) when the new model's test average precision is
    below the current model's on the same rows by more than ``cfg.ap_tolerance`` and not
    ``cfg.force``; ``ValueError`` when the history is too short or the data file unusable.
    """
    import lightgbm as lgb
    import onnxmltools

    from stream_app.models.onnx_model import OnnxScorer

    if cfg.label_delay_days < 0 or cfg.test_days < 1:
        raise ValueError("need label_delay_days >= 0 and test_days >= 1")
    out_dir = Path(cfg.output_dir) if cfg.output_dir else packaged_model_path().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    horizon_ms = cfg.dedup_horizon_s * 1000
    if cfg.data_path:
        data, source, start_ms, days = _load_user_data(cfg, out_dir, horizon_ms)
    else:
        gen = GeneratorConfig(seed=cfg.seed, n_customers=cfg.n_customers)
        print(f"generating {cfg.days} days of history for {cfg.n_customers} customers ...", file=sys.stderr)
        data = build_dataset(gen, cfg.days, horizon_ms, label_delay_ms=cfg.label_delay_days * DAY_MS,
                             table=EntityTable(cfg.features.specs))
        source = {"source": "stream_app.devtools.generator (synthetic, generated at training time)",
                  "generator": asdict(gen)}
        start_ms, days = gen.start_ms, cfg.days
    day = (data.ts_ms - start_ms) // DAY_MS
    train_end = days - cfg.test_days - cfg.label_delay_days
    test_start = days - cfg.test_days
    # A training row's label must have arrived before the test period starts (a label_time column may say
    # later than the delay): a row whose label was not known yet is left out, not read as legit.
    train = (day < train_end) & (data.label_ms < start_ms + test_start * DAY_MS)
    test = day >= test_start
    if train_end <= 0 or not data.y[train].any() or not data.y[test].any():
        raise ValueError(f"not enough history: {days} days of data, {int(data.y[train].sum())} frauds in the "
                         f"training period and {int(data.y[test].sum())} in the test period; need more days "
                         f"than test ({cfg.test_days}) + label delay ({cfg.label_delay_days}) and frauds in both")
    if not (data.y[train] == 0).any():
        raise ValueError("the training period has no legitimate transactions")

    model = _new_classifier(cfg, cfg.n_estimators)
    print(f"training on {int(train.sum()):,} rows ({int(data.y[train].sum())} frauds) ...", file=sys.stderr)
    model.fit(data.x[train], data.y[train])

    model_path = out_dir / PACKAGED_MODEL
    k = cfg.top_k_cards
    x_test, y_test = data.x[test], data.y[test]
    # Everything is written to a directory of its own first (the model watcher only looks at
    # *.onnx directly in a watched directory) and moved into place only when accepted.
    staging = Path(tempfile.mkdtemp(prefix=".train-", dir=out_dir))
    try:
        new_model = staging / PACKAGED_MODEL
        _to_onnx(model, new_model, len(cfg.features.names))
        digest = sha256_file(new_model)
        importance = model.booster_.feature_importance(importance_type="gain").astype(float)

        def period(a: int, b: int) -> list[str]:
            return [format_ts(start_ms + a * DAY_MS), format_ts(start_ms + b * DAY_MS)]

        card: dict[str, Any] = {
            "name": "fraud-gbt",
            "version": f"gbt-{datetime.now(UTC):%Y%m%d}-{digest[:8]}",
            "created_at": format_ts(int(time.time() * 1000)),
            "framework": f"lightgbm {lgb.__version__} -> onnxmltools {onnxmltools.__version__}",
            "feature_set": cfg.features.name,
            "entities": cfg.entities,
            "feature_names": list(cfg.features.names),
            "input": {"name": "features", "dtype": "float32", "shape": [None, len(cfg.features.names)]},
            "output": "probabilities[:, 1] = P(fraud)",
            "training_data": {
                **source,
                "days": days,
                "periods_days": {"train": [0, train_end], "gap (label delay)": [train_end, test_start],
                                 "test": [test_start, days]},
                "periods": {"train": period(0, train_end), "gap (label delay)": period(train_end, test_start),
                            "test": period(test_start, days)},
            },
            "params": model.get_params(),
            "feature_stats": feature_stats(data.x[train], data.y[train], importance, cfg.features.names),
            "sha256": digest,
            "code": {"module": "stream_app.offline.training", "git_commit": _git_commit(), "command": _command(cfg)},
        }
        card_path(new_model).write_text(json.dumps(card, indent=2, default=str))

        scorer = OnnxScorer.load(new_model, cfg.features)  # the served path: checks card, sha256 and feature order
        onnx_test = np.asarray(scorer.predict_proba_many(x_test.tolist()))
        lgb_test = model.predict_proba(x_test)[:, 1]
        card["metrics"] = {
            "train": evaluate(data.y[train], model.predict_proba(data.x[train])[:, 1], data.ts_ms[train],
                              data.cards[train], k),
            "test": evaluate(y_test, onnx_test, data.ts_ms[test], data.cards[test], k),
        }
        card["onnx_parity_max_abs_diff"] = float(np.max(np.abs(onnx_test - lgb_test)))
        # Drift is judged against the held-out period and the model's own scores on it.
        card["drift_reference"] = reference_from_rows(x_test, onnx_test, data.warm[test], names=cfg.features.names)

        comparison, current_scores = compare_with_current(model_path, x_test, y_test, onnx_test, cfg)
        card["replaced"] = comparison
        if comparison["decision"] == "refused":
            message = (f"refused to replace {model_path} (version {comparison['current']['version']}): on this "
                       f"run's test period ({len(y_test):,} rows, {int(y_test.sum())} frauds) the new model's "
                       f"average precision is {comparison['new_average_precision']:.4f}, the current model's "
                       f"{comparison['current_average_precision']:.4f} (worse by "
                       f"{-comparison['ap_difference']:.4f}, tolerance {cfg.ap_tolerance:g}). Nothing was "
                       f"written; --force replaces it anyway.")
            raise ModelRefused(message, comparison, card)

        if cfg.all_history:
            card.update(_refit_on_all_history(cfg, data, start_ms, days, new_model, x_test, test))

        if cfg.edge_trees > 0:
            card["edge_model"] = _export_edge(cfg, data.x[train], data.y[train], x_test, y_test, data.warm[test],
                                              staging, new_model, card)

        png = model_path.with_name(model_path.stem + PR_CURVE_SUFFIX)
        previous = None
        if current_scores is not None:
            previous = (current_scores, f"current model {comparison['current']['version']}, same rows")
        point = plot_pr_curve(
            staging / png.name, y_test, onnx_test, f"new model {card['version']}", cfg.review_threshold,
            f"Test period {format_ts(start_ms + test_start * DAY_MS)[:10]} to "
            f"{format_ts(start_ms + days * DAY_MS - 1)[:10]}: {len(y_test):,} tx, {int(y_test.sum())} frauds",
            previous)
        card["pr_curve"] = {"file": png.name, "sha256": sha256_file(staging / png.name),
                            "operating_point": point}
        card_path(new_model).write_text(json.dumps(card, indent=2, default=str))

        # Into place: the picture and the edge model first, then the model, then its card (a
        # watcher waits for a card whose sha256 matches the model, so it never takes a half state).
        os.replace(staging / png.name, png)
        if "edge_model" in card:
            edge_dir = out_dir / "edge"
            edge_dir.mkdir(exist_ok=True)
            for name in (EDGE_MODEL, EDGE_MODEL + ".card.json"):
                os.replace(staging / name, edge_dir / name)
        os.replace(new_model, model_path)
        os.replace(card_path(new_model), card_path(model_path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if comparison["decision"] == "forced":
        print(f"warning: --force: replaced {model_path} although the new model's average precision "
              f"{comparison['new_average_precision']:.4f} is below the current model's "
              f"{comparison['current_average_precision']:.4f} on the same test rows", file=sys.stderr)
    print(json.dumps({**card["metrics"], "replaced": comparison}, indent=2, default=str), file=sys.stderr)
    return card



def _refit_on_all_history(cfg: TrainConfig, data: Dataset, start_ms: int, days: int, path: Path,
                          x_test: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """The production retrain: the recipe was just validated on the held-out period (the card's metrics);
    the model exported is the same recipe fitted on all history whose labels had arrived by the data's end.
    Rows whose labels were not mature yet are left out, not read as legit. Returns the card's updates."""
    end_ms = start_ms + days * DAY_MS
    mature = data.label_ms <= end_ms
    if not data.y[mature].any():
        raise ValueError("no fraud among the rows with mature labels: nothing to refit on")
    print(f"refitting on all history: {int(mature.sum()):,} rows with mature labels "
          f"({int(data.y[mature].sum())} frauds; {int((~mature).sum()):,} recent rows left out) ...", file=sys.stderr)
    final = _new_classifier(cfg, cfg.n_estimators)
    final.fit(data.x[mature], data.y[mature])
    _to_onnx(final, path, len(cfg.features.names))
    digest = sha256_file(path)
    scores = np.asarray(final.predict_proba(x_test))[:, 1]
    last = int(data.ts_ms[mature].max()) if mature.any() else start_ms
    return {
        "version": f"gbt-{datetime.now(UTC):%Y%m%d}-{digest[:8]}",
        "sha256": digest,
        "params": final.get_params(),
        "final_fit": {
            "what": "the exported model: the evaluated recipe refitted on all rows whose labels had arrived by the "
                    "end of the data; metrics are the held-out evaluation's (of the same recipe, trained on less)",
            "rows": int(mature.sum()), "frauds": int(data.y[mature].sum()),
            "left_out_immature": int((~mature).sum()),
            "period": [format_ts(int(data.ts_ms.min())), format_ts(last)],
        },
        # Its scores on the test period are in-sample now: the reference says so.
        "drift_reference": {**reference_from_rows(x_test, scores, data.warm[test], names=cfg.features.names),
                            "in_sample": True},
    }


def _export_edge(cfg: TrainConfig, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, warm_test: np.ndarray, staging: Path, main_model: Path,
                 main_card: dict[str, Any]) -> dict[str, Any]:
    """A small model for constrained devices: few shallow trees, its size and the AP it gives up."""
    from stream_app.models.onnx_model import OnnxScorer

    model = _new_classifier(cfg, cfg.edge_trees, max_depth=cfg.edge_max_depth,
                            num_leaves=min(31, 2 ** cfg.edge_max_depth))
    model.fit(x_train, y_train)
    path = staging / EDGE_MODEL
    _to_onnx(model, path, len(cfg.features.names))
    digest = sha256_file(path)
    card = {**main_card, "name": "fraud-gbt-edge", "version": f"gbt-edge-{datetime.now(UTC):%Y%m%d}-{digest[:8]}",
            "params": model.get_params(), "sha256": digest}
    card.pop("metrics", None)
    card.pop("replaced", None)
    card_path(path).write_text(json.dumps(card, indent=2, default=str))
    scores = np.asarray(OnnxScorer.load(path, cfg.features).predict_proba_many(x_test.tolist()))
    edge_ap = average_precision(y_test, scores)
    main_ap = main_card["metrics"]["test"]["average_precision"]
    card["metrics"] = {"test": {"rows": int(len(y_test)), "frauds": int(y_test.sum()),
                                "roc_auc": roc_auc(y_test, scores), "average_precision": edge_ap}}
    # Its own scores, not the main model's:
    card["drift_reference"] = reference_from_rows(x_test, scores, warm_test, names=cfg.features.names)
    card_path(path).write_text(json.dumps(card, indent=2, default=str))
    return {"file": f"edge/{EDGE_MODEL}", "version": card["version"], "trees": cfg.edge_trees,
            "max_depth": cfg.edge_max_depth, "size_bytes": path.stat().st_size,
            "main_size_bytes": main_model.stat().st_size, "test_average_precision": edge_ap,
            "ap_loss_vs_main": main_ap - edge_ap}


# ------------------------------------------------------------------- drift reference of a shipped card

def rebuild_drift_reference(model_path: Path) -> dict[str, Any]:
    """Recompute the drift reference in an existing model's card, the model itself untouched.

    The history is generated again from what the card recorded (generator config, days, test period)
    and replayed (:mod:`stream_app.offline.replay`); the model scores its test period and ``reference_from_rows``
    takes the histograms with the current row filter. Refuses (``ValueError``) when the regenerated
    test period is not the card's (other row count or average precision): the reference would then
    describe other data. Cards trained on a user's data file are retrained instead.
    """
    from stream_app.models.onnx_model import OnnxScorer

    path = card_path(model_path)
    card = json.loads(path.read_text())
    history = card["training_data"]
    if "generator" not in history:
        raise ValueError(f"{path}: trained on a data file, not on generated history; retrain to rebuild its "
                         "drift reference")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in history["generator"].items()}
    gen = GeneratorConfig(**fields)
    print(f"regenerating {history['days']} days of history ({gen}) ...", file=sys.stderr)
    gap = history["periods_days"]["gap (label delay)"]  # the label delay the card's model was trained with
    features = FeatureSet.parse(card.get("entities", DEFAULT_ENTITIES_TEXT))
    data = build_dataset(gen, history["days"], TrainConfig().dedup_horizon_s * 1000,
                         label_delay_ms=(gap[1] - gap[0]) * DAY_MS, table=EntityTable(features.specs))
    test = (data.ts_ms - gen.start_ms) // DAY_MS >= history["periods_days"]["test"][0]
    scores = np.asarray(OnnxScorer.load(model_path, features).predict_proba_many(data.x[test].tolist()))
    recorded_ap = card.get("metrics", {}).get("test", {}).get("average_precision")
    ap = average_precision(data.y[test], scores)
    if card["drift_reference"]["rows"] != int(test.sum()) or (recorded_ap is not None
                                                             and not math.isclose(ap, recorded_ap, abs_tol=1e-9)):
        raise ValueError(f"{path}: the regenerated test period ({int(test.sum())} rows, AP {ap:.6f}) is not the "
                         f"card's ({card['drift_reference']['rows']} rows, AP {recorded_ap}); not rebuilt")
    reference = reference_from_rows(data.x[test], scores, data.warm[test], names=features.names)
    reference["rebuilt"] = {"at": format_ts(int(time.time() * 1000)),
                            "by": "stream_app.offline.training.rebuild_drift_reference",
                            "from": "the card's own training_data (generator config, days, test period); "
                                    "model unchanged, rows and average precision checked equal"}
    card["drift_reference"] = reference
    path.write_text(json.dumps(card, indent=2, default=str))
    return reference


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stream_app.offline.training",
                                     description="Rebuild the drift reference of existing model cards.")
    parser.add_argument("--rebuild-drift-reference", nargs="+", metavar="MODEL.onnx", required=True)
    for model in parser.parse_args().rebuild_drift_reference:
        ref = rebuild_drift_reference(Path(model))
        print(f"{model}: drift reference rebuilt, {ref['rows']} rows, {ref['filter']['rows']} of warm cards")
