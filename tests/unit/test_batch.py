"""Batch scoring gives the stream's answers: same validation, event-time replay, same features and scores."""

from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_app.cli import main
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.decision import Policy
from stream_app.domain.entities import MODEL_FEATURES, EntityTable, featurize_model
from stream_app.domain.events import Transaction
from stream_app.domain.scoring import FraudScorer
from stream_app.models import checkpoint
from stream_app.models.onnx_model import OnnxScorer
from stream_app.models.river_model import RiverScorer
from stream_app.offline.batch import BatchResult, Progress, errors_path, flatten, read_file, run

HORIZON_MS = 7 * 86_400_000
FIELDS = ("tx_id", "card_id", "merchant_id", "amount", "currency", "timestamp", "country", "channel", "mcc")


@pytest.fixture(scope="module")
def txs() -> list[Transaction]:
    return [item.tx for item in simulate(GeneratorConfig(seed=11, n_customers=200), days=2)]


def trained_river(n: int) -> RiverScorer:
    """A River model that has learned ``n`` labels, so its scores vary from row to row."""
    river = RiverScorer()
    states: dict[str, Any] = {}
    table = EntityTable()
    for item in list(simulate(GeneratorConfig(seed=5, n_customers=100), days=2))[:n]:
        river.learn_one(featurize_model(states, table, item.tx, HORIZON_MS), item.is_fraud)
    return river


@pytest.fixture(scope="module")
def scorer() -> FraudScorer:
    return FraudScorer(OnnxScorer.load(), trained_river(400), Policy(river_warmup_labels=100))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write dicts of transaction fields in the format named by the extension (``None``: empty cell)."""
    if path.suffix == ".jsonl":
        path.write_bytes(b"".join(orjson.dumps({k: v for k, v in r.items() if v is not None}) + b"\n" for r in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def as_rows(txs: list[Transaction], fmt: str) -> list[dict[str, Any]]:
    """The same transactions as each format would carry them: RFC 3339 in JSONL, epoch ms in CSV,
    a timezone-aware timestamp column in Parquet."""
    rows = [tx.to_json_dict() for tx in txs]
    for row, tx in zip(rows, txs, strict=True):
        if fmt == ".csv":
            row["timestamp"] = tx.ts_ms
        elif fmt == ".parquet":
            row["timestamp"] = datetime.fromtimestamp(tx.ts_ms / 1000, UTC)
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def score(path: Path, output: Path, scorer: FraudScorer) -> BatchResult:
    return run(read_file(path), output, scorer, horizon_ms=HORIZON_MS, max_bytes=16384)


def test_csv_jsonl_and_parquet_inputs_give_identical_results(tmp_path: Path, txs: list[Transaction],
                                                             scorer: FraudScorer) -> None:
    outputs, errors, results = [], [], []
    for fmt in (".jsonl", ".csv", ".parquet"):
        rows = as_rows(txs, fmt)
        bad = [{**rows[0], "tx_id": "bad-1", "card_id": None}, {**rows[1], "tx_id": "bad-2", "currency": "XXX"},
               {**rows[2], "tx_id": "bad-3", "amount": -5.0}, {**rows[3], "tx_id": "bad-4", "channel": "teleport"}]
        rows = [*rows[:100], *bad, rows[7], *rows[100:]]  # rows[7] again: a duplicate
        output = tmp_path / f"out{fmt}.jsonl"
        results.append(score(write_rows(tmp_path / f"in{fmt}", rows), output, scorer))
        outputs.append(output.read_bytes())
        errors.append(errors_path(output).read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert errors[0] == errors[1] == errors[2]
    assert {(r.rows, r.scored, r.errors, r.duplicates) for r in results} == {(len(txs) + 5, len(txs), 4, 1)}
    assert [r["tx_id"] for r in read_jsonl(tmp_path / "out.csv.jsonl")] == [tx.tx_id for tx in txs]


def test_out_of_order_input_is_replayed_in_event_time_order(tmp_path: Path, txs: list[Transaction],
                                                            scorer: FraudScorer) -> None:
    shuffled = txs[:600]
    random.Random(3).shuffle(shuffled)
    # Two events of one card at one instant: their features depend on their order, the file's.
    tie_b = replace(txs[10], tx_id="tie-b", merchant_id="m_tie_b", amount=40.0)
    tie_a = replace(txs[10], tx_id="tie-a", merchant_id="m_tie_a", amount=900.0)
    shuffled[5:5] = [tie_b, tie_a]
    expected = sorted(shuffled, key=lambda tx: tx.ts_ms)
    states: dict[str, Any] = {}
    table = EntityTable()
    expected_rows = [featurize_model(states, table, tx, HORIZON_MS) for tx in expected]
    expected_scores = scorer.score_many(expected, expected_rows)
    states, table = {}, EntityTable()
    in_file_order = {tx.tx_id: featurize_model(states, table, tx, HORIZON_MS) for tx in shuffled}
    assert any(in_file_order[tx.tx_id] != row for tx, row in zip(expected, expected_rows, strict=True))

    output = tmp_path / "out.jsonl"
    result = score(write_rows(tmp_path / "in.jsonl", [tx.to_json_dict() for tx in shuffled]), output, scorer)
    records = read_jsonl(output)
    assert result.scored == len(expected) and result.errors == 0
    assert [r["tx_id"] for r in records] == [tx.tx_id for tx in expected]
    ids = [r["tx_id"] for r in records]
    assert ids.index("tie-b") < ids.index("tie-a")
    assert [list(r["features"].values()) for r in records] == expected_rows
    assert [(r["risk_score"], r["scores"]["river"], r["decision"]) for r in records] == [
        (round(s.risk, 6), round(s.river_score, 6), s.decision) for s in expected_scores]


def test_bad_rows_go_to_the_errors_file_with_reasons(tmp_path: Path, txs: list[Transaction],
                                                     scorer: FraudScorer) -> None:
    rows: list[dict[str, Any]] = as_rows(txs[:50], ".csv")
    rows[3] = {**rows[3], "amount": "12,50"}
    rows[8] = {**rows[8], "timestamp": "yesterday"}
    rows[9] = {**rows[9], "timestamp": "2026-01-01T10:00:00"}  # no offset: ambiguous
    rows[20] = {**rows[20], "merchant_id": ""}
    rows.append(rows[30])
    output = tmp_path / "out.parquet"
    result = score(write_rows(tmp_path / "in.csv", rows), output, scorer)
    refused = read_jsonl(errors_path(output))
    assert [(e["row"], e["reason"], e["field"]) for e in refused] == [
        (4, "wrong_type", "amount"), (9, "invalid_value", "timestamp"), (10, "invalid_value", "timestamp"),
        (21, "missing_field", "merchant_id")]
    assert all(e["detail"] for e in refused)
    assert (result.rows, result.scored, result.errors, result.duplicates) == (51, 46, 4, 1)
    assert pq.read_table(output).num_rows == 46

    lines = tmp_path / "in.jsonl"
    lines.write_bytes(txs[0].to_bytes() + b"\nnot json\n\n[1, 2]\n" + b'{"tx_id": "t" ' + b" " * 20000 + b"}\n")
    result = run(read_file(lines), output, scorer, horizon_ms=HORIZON_MS, max_bytes=16384)
    assert [(e["row"], e["reason"]) for e in read_jsonl(errors_path(output))] == [
        (2, "invalid_json"), (4, "not_an_object"), (5, "message_too_large")]
    assert (result.rows, result.scored, result.errors) == (4, 1, 3)


@pytest.mark.parametrize("fmt", [".jsonl", ".csv", ".parquet"])
def test_output_formats_round_trip(tmp_path: Path, fmt: str, txs: list[Transaction], scorer: FraudScorer) -> None:
    source = write_rows(tmp_path / "in.jsonl", [tx.to_json_dict() for tx in txs[:300]])
    reference = tmp_path / "reference.jsonl"
    score(source, reference, scorer)
    records = read_jsonl(reference)
    assert set(records[0]) == {"tx_id", "card_id", "merchant_id", "event_time", "decision", "risk_score", "scores",
                               "model_versions", "policy", "features"}
    assert list(records[0]["features"]) == list(MODEL_FEATURES)
    expected = [flatten(r) for r in records]
    assert {"score_onnx", "score_river", "version_onnx", "version_river", *MODEL_FEATURES} <= set(expected[0])

    output = tmp_path / f"out{fmt}"
    score(source, output, scorer)
    if fmt == ".jsonl":
        assert read_jsonl(output) == records
    elif fmt == ".csv":
        with output.open(newline="") as f:
            assert list(csv.DictReader(f)) == [{k: str(v) for k, v in row.items()} for row in expected]
    else:
        assert pq.read_table(output).to_pylist() == expected

    empty = write_rows(tmp_path / "empty.jsonl", [])
    assert score(empty, output, scorer).scored == 0 and output.exists()


def test_unknown_formats_and_missing_files_are_refused(tmp_path: Path, scorer: FraudScorer) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        read_file(tmp_path / "in.xlsx")
    with pytest.raises(ValueError, match="no such file"):
        read_file(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown format"):
        run(iter([]), tmp_path / "out.txt", scorer, horizon_ms=HORIZON_MS, max_bytes=16384)


def test_progress_redraws_at_most_every_half_second() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, clock=lambda: now[0])
    progress.start("scoring", 1000)
    for done in range(0, 1001, 10):  # 100 updates over 1 s
        now[0] = done / 1000
        progress.update(done)
    progress.finish(1000)
    assert stream.getvalue().count("\r") == 4  # t=0, 0.5, 1.0, and the final line
    assert stream.getvalue().endswith("\n") and "scoring: 1000/1000 (100%) rows, 1,000 rows/s" in stream.getvalue()


RESULT = re.compile(r"RESULT rows=(\d+) scored=(\d+) errors=(\d+) duplicates=(\d+) seconds=([\d.]+) "
                    r"rows_per_s=(\d+)")


def test_cli_restores_river_from_the_checkpoint_and_prints_the_result(
        tmp_path: Path, txs: list[Transaction], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAM_APP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STREAM_APP_COMBINER", "weighted")
    monkeypatch.setenv("STREAM_APP_RIVER_WARMUP_LABELS", "100")
    rows = [tx.to_json_dict() for tx in txs[:200]]
    source = write_rows(tmp_path / "in.jsonl", [*rows, {"tx_id": "x"}, rows[0]])

    assert main(["batch", "--input", str(source), "--output", str(tmp_path / "fresh.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "river=river-logreg@0" in out and "stacker" not in out  # weighted combiner: no stacker
    match = RESULT.fullmatch(out.strip().splitlines()[-1])
    assert match, out
    assert tuple(map(int, match.groups()[:4])) == (202, 200, 1, 1)
    assert int(match[6]) > 0 and float(match[5]) > 0
    assert {r["scores"]["river"] for r in read_jsonl(tmp_path / "fresh.jsonl")} == {0.5}

    river = trained_river(300)
    checkpoint.save(tmp_path / "data" / "checkpoints", river.version, 299, (river, None), None)
    assert main(["batch", "--input", str(source), "--output", str(tmp_path / "restored.csv")]) == 0
    assert "river=river-logreg@300" in capsys.readouterr().out
    with (tmp_path / "restored.csv").open(newline="") as f:
        restored = list(csv.DictReader(f))
    assert {r["version_river"] for r in restored} == {"river-logreg@300"}
    assert len({r["score_river"] for r in restored}) > 10
    expected = FraudScorer(OnnxScorer.load(), river, Policy(river_warmup_labels=100))
    score(source, tmp_path / "direct.csv", expected)
    assert (tmp_path / "direct.csv").read_text() == (tmp_path / "restored.csv").read_text()
    assert expected.river.n_learned == 300  # batch scoring never learns


def test_cli_refuses_what_it_cannot_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAM_APP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    source = write_rows(tmp_path / "in.jsonl", [])
    cases = {
        ("--input", str(source), "--output", str(tmp_path / "o.xlsx")): "unknown format",
        ("--input", str(source), "--output", str(tmp_path / "o.csv"), "--end-offset", "5"): "need --from-topic",
        ("--input", str(source), "--output", str(tmp_path / "o.csv"), "--checkpoint-dir", str(tmp_path)):
            "no valid checkpoint",
        ("--from-topic", "t", "--output", str(tmp_path / "o.csv")): "KAFKA_BOOTSTRAP_SERVERS",
    }
    for args, message in cases.items():
        assert main(["batch", *args]) == 2, args
        assert message in capsys.readouterr().err
