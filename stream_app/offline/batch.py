"""Batch scoring: a file (or a topic range) of transactions through the stream's own code path.

Rescoring history must give the answers the stream gives, or it cannot be used to compare models or
explain a decision. So nothing here computes features or scores itself: rows go through the ingress
validation (:func:`~stream_app.domain.events.transaction_from_dict` / ``parse_transaction``), are replayed in
event-time order through :func:`~stream_app.domain.features.featurize` with one state per card, and are scored
by :class:`~stream_app.domain.scoring.FraudScorer` in large batches (one onnxruntime call per batch). Records
are the stream's (``records``); bad rows are data, not crashes: they go to ``<output>.errors.jsonl``.

Everything except :func:`load_scorer` is free of Kafka and Faust; the topic adapter is
:mod:`stream_app.kafka.topic_reader`.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

import orjson

from stream_app.domain.entities import EntityTable, featurize_model
from stream_app.domain.events import (
    NO_PAN_KEY,
    DuplicateEvent,
    InvalidEvent,
    Transaction,
    parse_transaction,
    transaction_from_dict,
)
from stream_app.domain.features import CardState
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.records import Source, decision_record
from stream_app.domain.scoring import FraudScorer, Scored
from stream_app.models import checkpoint
from stream_app.settings import Settings

BATCH_ROWS: Final = 4096  # rows per score_many call: amortises the onnxruntime call, bounds memory
FORMATS: Final = (".csv", ".jsonl", ".parquet")

#: Where a row came from: its 1-based row number in a file, or its topic/partition/offset.
Position = int | Source
#: A row before validation: JSON bytes (parsed by the ingress parser itself) or a dict of fields.
RawRow = bytes | dict[str, Any]


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow is an optional extra: only Parquet needs it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("Parquet needs pyarrow: pip install 'stream_app[batch]'") from None
    return pa, pq


def file_format(path: Path) -> str:
    """The format named by the extension; raises ``ValueError`` for any other."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown format {suffix or '(none)'!r}, expected one of {', '.join(FORMATS)}")
    return suffix


# -- input ----------------------------------------------------------------------------------------
def _csv_fields(row: dict[str | None, Any]) -> dict[str, Any]:
    """CSV cells are text: an empty cell is a missing field, the amount is read as a number and an
    all-digit timestamp as epoch ms, so validation sees what a JSON producer would have sent."""
    obj = {k: v for k, v in row.items() if k is not None and v not in ("", None)}
    amount = obj.get("amount")
    if isinstance(amount, str):
        try:
            obj["amount"] = float(amount)
        except ValueError:
            pass  # left as text: validation reports wrong_type
    timestamp = obj.get("timestamp")
    if isinstance(timestamp, str) and timestamp.isdigit():
        obj["timestamp"] = int(timestamp)
    return obj


def _parquet_fields(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet's native timestamp and decimal columns, turned into what the JSON parser accepts
    (a naive timestamp stays naive, and is refused like a naive RFC 3339 string)."""
    timestamp, amount = row.get("timestamp"), row.get("amount")
    if isinstance(timestamp, datetime):
        row["timestamp"] = timestamp.isoformat()
    if isinstance(amount, Decimal):
        row["amount"] = float(amount)
    return row


def _jsonl_rows(path: Path) -> Iterator[tuple[int, RawRow]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line


def _csv_rows(path: Path) -> Iterator[tuple[int, RawRow]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.DictReader(f), 1):
            yield n, _csv_fields(row)


def _parquet_rows(path: Path) -> Iterator[tuple[int, RawRow]]:
    _, pq = _pyarrow()
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        for row in batch.to_pylist():
            n += 1
            yield n, _parquet_fields(row)


def read_file(path: Path) -> Iterator[tuple[int, RawRow]]:
    """Rows of a .csv / .jsonl / .parquet file with their row number (JSONL: the line number;
    CSV: the data row after the header; Parquet: the row). Checks the format before any reading."""
    fmt = file_format(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if fmt == ".parquet":
        _pyarrow()
    return {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}[fmt](path)


def to_transaction(raw: RawRow, max_bytes: int, pans: PanTokenizer = NO_PAN_KEY) -> Transaction:
    """The ingress validation: bytes through the stream's parser, a dict through its field checks
    (card numbers tokenized under the stream's key, or refused without one)."""
    if isinstance(raw, bytes):
        return parse_transaction(raw, max_bytes, pans)
    return transaction_from_dict(raw, pans)


# -- output ---------------------------------------------------------------------------------------
_FLAT_PREFIX: Final = {"scores": "score_", "model_versions": "version_", "features": ""}


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One column per value, for tables: ``score_onnx``, ``version_river``, features by name."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({_FLAT_PREFIX[key] + k: v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


class RecordWriter(Protocol):
    def write(self, records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class _JsonlWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")

    def write(self, records: list[dict[str, Any]]) -> None:
        self._file.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))

    def close(self) -> None:
        self._file.close()


class _CsvWriter:
    """The header comes from the first row: the columns depend on the configured models (challenger)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._writer: csv.DictWriter[str] | None = None

    def write(self, records: list[dict[str, Any]]) -> None:
        rows = [flatten(r) for r in records]
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(rows[0]))
            self._writer.writeheader()
        self._writer.writerows(rows)

    def close(self) -> None:
        self._file.close()


class _ParquetWriter:
    """One row group per batch; the first batch fixes the schema."""

    def __init__(self, path: Path) -> None:
        self._pa, self._pq = _pyarrow()
        self._path = path
        self._writer: Any = None

    def write(self, records: list[dict[str, Any]]) -> None:
        schema = None if self._writer is None else self._writer.schema
        table = self._pa.Table.from_pylist([flatten(r) for r in records], schema=schema)
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(self._path, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is None:
            self._pq.write_table(self._pa.table({}), self._path)
        else:
            self._writer.close()


def open_writer(path: Path) -> RecordWriter:
    writers: dict[str, Callable[[Path], RecordWriter]] = {
        ".jsonl": _JsonlWriter, ".csv": _CsvWriter, ".parquet": _ParquetWriter}
    return writers[file_format(path)](path)


def errors_path(output: Path) -> Path:
    return output.with_name(output.name + ".errors.jsonl")


class ErrorLog:
    """``<output>.errors.jsonl``: one line per refused row, where it was and why (the DLQ's reasons)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self.count = 0

    def add(self, position: Position, error: InvalidEvent) -> None:
        where: dict[str, Any] = {"row": position} if isinstance(position, int) else {"source": position.as_dict()}
        record = {**where, "reason": error.reason, "detail": error.detail, "field": error.field}
        self._file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self.count += 1

    def close(self) -> None:
        self._file.close()


# -- progress and result --------------------------------------------------------------------------
class Progress:
    """A ``\\r`` status line (rows done / total, rows/s), redrawn at most every ``interval_s``: a long
    run shows it is alive without flooding a log when stderr is a file. ``stream=None``: silent."""

    def __init__(self, stream: TextIO | None = sys.stderr, interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self.clock = clock
        self._stage = ""
        self._total: int | None = None
        self._started = self._drawn = 0.0

    def start(self, stage: str, total: int | None = None) -> None:
        self._stage, self._total = stage, total
        self._started = self.clock()
        self._drawn = -math.inf

    def update(self, done: int) -> None:
        now = self.clock()
        if now - self._drawn >= self.interval_s:
            self._draw(done, now)

    def finish(self, done: int) -> None:
        self._draw(done, self.clock())
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, done: int, now: float) -> None:
        self._drawn = now
        if self.stream is None:
            return
        rate = done / max(now - self._started, 1e-9)
        of_total = f"/{self._total} ({done / self._total:.0%})" if self._total else ""
        self.stream.write(f"\r{self._stage}: {done}{of_total} rows, {rate:,.0f} rows/s   ")
        self.stream.flush()


@dataclass(frozen=True, slots=True)
class BatchResult:
    rows: int  # input rows, valid or not
    scored: int
    errors: int  # refused rows (in the errors file)
    duplicates: int  # tx_ids the card had already seen: not scored twice, as in the stream
    seconds: float

    def summary(self) -> str:
        """The machine-readable last line, like the other commands' ``RESULT`` lines."""
        return (f"RESULT rows={self.rows} scored={self.scored} errors={self.errors} "
                f"duplicates={self.duplicates} seconds={self.seconds:.2f} "
                f"rows_per_s={self.rows / max(self.seconds, 1e-9):.0f}")


# -- the replay -----------------------------------------------------------------------------------
def event_time_order(rows: Iterable[tuple[Position, RawRow]], max_bytes: int, errors: ErrorLog,
                     progress: Progress, pans: PanTokenizer = NO_PAN_KEY
                     ) -> tuple[list[tuple[Transaction, Position]], int]:
    """Validate every row (invalid ones to ``errors``) and sort the transactions by event time.

    The sort is stable, so ties keep input order. Returns them with the number of rows read."""
    valid: list[tuple[Transaction, Position]] = []
    n = 0
    progress.start("reading")
    for n, (position, raw) in enumerate(rows, 1):
        try:
            valid.append((to_transaction(raw, max_bytes, pans), position))
        except InvalidEvent as exc:
            errors.add(position, exc)
        progress.update(n)
    progress.finish(n)
    valid.sort(key=lambda item: item[0].ts_ms)
    return valid, n


def replay(ordered: Iterable[tuple[Transaction, Position]], scorer: FraudScorer, horizon_ms: int,
           errors: ErrorLog, batch_rows: int = BATCH_ROWS) -> Iterator[list[Scored]]:
    """Featurize in the given order with one state per card, as the stream does, and score in
    batches of ``batch_rows``. Never learns. Late events go to ``errors``; duplicates are skipped, as
    in the stream (the caller counts them: every row is scored, refused or a duplicate). Entity profiles
    are built from the file's own transactions (a batch has no labels: label-derived risk stays at its prior)."""
    states: dict[str, CardState] = {}
    entities = EntityTable(scorer.features.specs)
    txs: list[Transaction] = []
    rows: list[list[float]] = []
    for tx, position in ordered:
        try:
            rows.append(featurize_model(states, entities, tx, horizon_ms))
        except DuplicateEvent:
            continue
        except InvalidEvent as exc:
            errors.add(position, exc)
            continue
        txs.append(tx)
        if len(txs) == batch_rows:
            yield scorer.score_many(txs, rows)
            txs, rows = [], []
    if txs:
        yield scorer.score_many(txs, rows)


def run(rows: Iterable[tuple[Position, RawRow]], output: Path, scorer: FraudScorer, *, horizon_ms: int,
        max_bytes: int, batch_rows: int = BATCH_ROWS, progress: Progress | None = None,
        pans: PanTokenizer = NO_PAN_KEY) -> BatchResult:
    """Score ``rows`` into ``output`` (format by extension) and ``<output>.errors.jsonl``."""
    started = time.perf_counter()
    progress = progress or Progress(None)
    writer = open_writer(output)  # an unknown output format fails before any work
    errors = ErrorLog(errors_path(output))
    try:
        ordered, n_rows = event_time_order(rows, max_bytes, errors, progress, pans)
        scored = 0
        progress.start("scoring", len(ordered))
        for batch in replay(ordered, scorer, horizon_ms, errors, batch_rows):
            writer.write([decision_record(s) for s in batch])
            scored += len(batch)
            progress.update(scored)
        progress.finish(len(ordered))
    finally:
        writer.close()
        errors.close()
    return BatchResult(n_rows, scored, errors.count, n_rows - scored - errors.count,
                       time.perf_counter() - started)


# -- models ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadedScorer:
    scorer: FraudScorer
    origin: str  # where the River model came from, for the operator
    refused: list[str]  # newer checkpoints that failed their integrity check


def load_scorer(settings: Settings, checkpoint_dir: Path | None = None) -> LoadedScorer:
    """The worker's scorer for these settings (ONNX model, challenger, thresholds, combiner), with
    River and the stacker from the newest valid checkpoint: batch answers what the stream would.

    ``checkpoint_dir`` defaults to ``$STREAM_APP_DATA_DIR/checkpoints``, where a missing checkpoint
    means a fresh River model; a directory given explicitly must hold a valid one."""
    scorer = FraudScorer.from_settings(settings)
    directory = checkpoint_dir or Path(settings.data_dir) / "checkpoints"
    ckpt, refused = checkpoint.latest(directory, settings.checkpoint_key.encode() or None)
    if ckpt is None:
        if checkpoint_dir is not None:
            raise ValueError(f"no valid checkpoint in {directory}" + "".join(f"; {r}" for r in refused))
        return LoadedScorer(scorer, f"fresh, no checkpoint in {directory}", refused)
    scorer.adopt(*ckpt.state)
    return LoadedScorer(scorer, f"checkpoint at examples offset {ckpt.offset} in {directory}", refused)
