"""Training on a small generated history: a temporal split, an ONNX file the server accepts, a PR
curve, no silent replacement of a better model, and training from a user's CSV / Parquet file."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_app.cli import build_parser, main
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.entities import MODEL_FEATURES
from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS
from stream_app.models.onnx_model import OnnxScorer
from stream_app.offline.evaluation import average_precision, roc_auc
from stream_app.offline.training import (
    REJECTS_FILE,
    TX_FIELDS,
    ModelRefused,
    TrainConfig,
    load_labeled_transactions,
    precision_recall_points,
    train_and_export,
)

# The small history every test here trains on (~4 s); the CLI flags say the same.
SMALL = dict(seed=3, n_customers=400, days=30, label_delay_days=5, test_days=8)
SMALL_FLAGS = ["--seed", "3", "--label-delay-days", "5", "--test-days", "8"]
MODEL_FILES = ("fraud_gbt.onnx", "fraud_gbt.onnx.card.json", "fraud_gbt.pr.png")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 40-tree model trained once into its own directory; tests copy the directory."""
    out = tmp_path_factory.mktemp("good")
    card = train_and_export(TrainConfig(**SMALL, n_estimators=40, output_dir=str(out)))
    return out, card


def _copy_of(good: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(good[0], out)
    return out


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_train_exports_a_servable_model_with_honest_split(good: tuple[Path, dict[str, Any]]) -> None:
    out, card = good
    periods = card["training_data"]["periods_days"]
    assert periods["train"][1] <= periods["gap (label delay)"][0] < periods["test"][0]
    assert periods["test"][0] - periods["train"][1] == 5
    assert card["metrics"]["test"]["roc_auc"] > 0.9
    assert card["onnx_parity_max_abs_diff"] < 1e-4
    scorer = OnnxScorer.load(out / "fraud_gbt.onnx")
    assert scorer.version == card["version"]
    assert card["replaced"]["decision"] == "first_model"
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES)  # no staging directory left behind


def test_pr_curve_png_is_written_and_recorded(good: tuple[Path, dict[str, Any]]) -> None:
    out, card = good
    png = out / "fraud_gbt.pr.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (700, 550)
    assert card["pr_curve"]["file"] == png.name
    assert card["pr_curve"]["sha256"] == hashlib.sha256(data).hexdigest()
    point = card["pr_curve"]["operating_point"]
    assert point["threshold"] == 0.3
    assert 0 < point["flagged"] and 0 < point["recall"] <= 1 and 0 < point["precision"] <= 1
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.std() > 0.05  # something is drawn on it


def test_precision_recall_points_against_known_values() -> None:
    precision, recall, thresholds = precision_recall_points(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.4, 0.4]))
    assert thresholds.tolist() == [0.9, 0.4, 0.1]
    assert precision.tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    assert recall.tolist() == pytest.approx([0.5, 1.0, 1.0])


def test_a_worse_model_is_refused_and_force_replaces_it(good: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out = _copy_of(good, tmp_path)
    before = _digests(out)
    with pytest.raises(ModelRefused) as refused:
        train_and_export(TrainConfig(**SMALL, n_estimators=2, output_dir=str(out)))
    comparison = refused.value.comparison
    assert comparison["decision"] == "refused"
    # the current model was scored on this run's test rows: the same rows as in its own card here
    assert comparison["current_average_precision"] == pytest.approx(good[1]["metrics"]["test"]["average_precision"])
    assert comparison["new_average_precision"] < comparison["current_average_precision"] - 0.005
    assert comparison["current"]["version"] == good[1]["version"]
    assert f"{comparison['new_average_precision']:.4f}" in str(refused.value)
    assert f"{comparison['current_average_precision']:.4f}" in str(refused.value)
    assert _digests(out) == before  # same files, same bytes, no staging directory left behind

    card = train_and_export(TrainConfig(**SMALL, n_estimators=2, output_dir=str(out), force=True))
    assert card["replaced"]["decision"] == "forced"
    assert card["replaced"]["current"]["version"] == good[1]["version"]
    assert card["replaced"]["new_average_precision"] == pytest.approx(comparison["new_average_precision"])
    after = _digests(out)
    assert sorted(after) == sorted(MODEL_FILES)
    assert all(after[name] != before[name] for name in MODEL_FILES)
    assert OnnxScorer.load(out / "fraud_gbt.onnx").version == card["version"]
    on_disk = json.loads((out / "fraud_gbt.onnx.card.json").read_text())
    assert on_disk["replaced"]["decision"] == "forced"


def test_cli_exits_non_zero_when_refused(good: tuple[Path, dict[str, Any]], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy_of(good, tmp_path)
    before = _digests(out)
    code = main(["train", "--days", "30", "--customers", "400", *SMALL_FLAGS, "--trees", "2",
                 "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 3
    current = good[1]["metrics"]["test"]["average_precision"]
    assert f"current_average_precision={current:.4f}" in captured.out
    assert "RESULT refused new_average_precision=" in captured.out
    assert "refused to replace" in captured.err and "--force" in captured.err
    assert _digests(out) == before


def _write_csv(path: Path) -> tuple[int, dict[str, int]]:
    """The small history as a user's CSV: amount in column ``amt``, labels in ``label``, days written
    newest first, some epoch-ms timestamps, mixed label spellings, and eight bad rows."""
    items = list(simulate(GeneratorConfig(seed=SMALL["seed"], n_customers=SMALL["n_customers"]),
                          days=SMALL["days"]))
    spellings = {True: ("fraud", "1", "TRUE", "Fraud"), False: ("legit", "0", "false", " Legit ")}
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        row = item.tx.to_json_dict()
        row["amt"] = repr(row.pop("amount"))
        if i % 7 == 0:
            row["timestamp"] = str(item.tx.ts_ms)
        row["label"] = spellings[item.is_fraud][i % 4]
        row["note"] = "ignored"
        rows.append(row)
    by_day: dict[int, list[dict[str, Any]]] = {}
    for row, item in zip(rows, items, strict=True):
        by_day.setdefault(item.tx.ts_ms // DAY_MS, []).append(row)
    ordered = [row for day in sorted(by_day, reverse=True) for row in by_day[day]]
    template = dict(ordered[100])
    bad = [
        {**template, "tx_id": "bad-1", "amt": "12,50"},  # wrong_type (not a number)
        {**template, "tx_id": "bad-2", "currency": "XXX"},  # unknown_currency
        {**template, "tx_id": "bad-3", "card_id": ""},  # missing_field
        {**template, "tx_id": "bad-4", "timestamp": "2026-01-05T10:00:00"},  # invalid_value (no offset)
        {**template, "tx_id": "bad-5", "label": "maybe"},  # invalid_label
        {**template, "tx_id": "bad-6", "label": ""},  # missing_label
        dict(ordered[200]),  # duplicate of a real row
        {**ordered[300], "card_id": "card_elsewhere"},  # its tx_id again, on another card
    ]
    positions = [5, 50, 500, 1000, 2000, 3000, 4000, 4500]
    for position, row in zip(positions, bad, strict=True):
        ordered.insert(position, row)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ordered[0]))
        writer.writeheader()
        writer.writerows(ordered)
    return len(items), {"amt_row": positions[0] + 1, "duplicate_rows": [positions[-2] + 1, positions[-1] + 1]}


def test_train_from_csv_with_column_mapping_and_rejects(good: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "history.csv"
    n_valid, where = _write_csv(data)
    out = tmp_path / "model"
    code = main(["train", "--data", str(data), "--column", "amount=amt", "--label-column", "label",
                 *SMALL_FLAGS, "--trees", "40", "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    card = json.loads((out / "fraud_gbt.onnx.card.json").read_text())
    source = card["training_data"]
    expected = {"duplicate": 2, "invalid_label": 1, "invalid_value": 1, "missing_field": 1, "missing_label": 1,
                "unknown_currency": 1, "wrong_type": 1}
    assert source["rejected"] == expected
    assert (source["rows_read"], source["rows_used"]) == (n_valid + 8, n_valid)
    assert source["columns"]["amount"] == "amt" and source["label_column"] == "label"
    assert source["periods_days"] == good[1]["training_data"]["periods_days"]
    assert "8 rejected" in captured.err and "unknown_currency=1" in captured.err
    rejects = [json.loads(line) for line in (out / REJECTS_FILE).read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == sorted(r for r, n in expected.items() for _ in range(n))
    amount_reject = next(r for r in rejects if r["reason"] == "wrong_type")
    assert (amount_reject["row"], amount_reject["column"], amount_reject["record"]["amt"]) == \
        (where["amt_row"], "amt", "12,50")
    assert [r["row"] for r in rejects if r["reason"] == "duplicate"] == where["duplicate_rows"]
    # Sorted by event time and replayed like generated history: the same rows, hence the same model.
    for split in ("train", "test"):
        assert card["metrics"][split]["rows"] == good[1]["metrics"][split]["rows"]
        assert card["metrics"][split]["frauds"] == good[1]["metrics"][split]["frauds"]
        assert card["metrics"][split]["average_precision"] == \
            pytest.approx(good[1]["metrics"][split]["average_precision"], abs=1e-9)
    assert OnnxScorer.load(out / "fraud_gbt.onnx").version == card["version"]


def test_load_parquet_with_typed_columns_and_mapping_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = list(simulate(GeneratorConfig(seed=1, n_customers=20), days=2))[:50]
    items_by_time = sorted(items, key=lambda item: item.tx.ts_ms)
    items = list(reversed(items))  # written newest first
    table = pa.table({
        "tx_id": [i.tx.tx_id for i in items], "card": [i.tx.card_id for i in items],
        "merchant_id": [i.tx.merchant_id for i in items], "amount": [i.tx.amount for i in items],
        "currency": [i.tx.currency for i in items],
        "timestamp": pa.array([datetime.fromtimestamp(i.tx.ts_ms / 1000, UTC) for i in items],
                              pa.timestamp("ms", tz="UTC")),
        "country": [i.tx.country for i in items], "channel": [i.tx.channel for i in items],
        "mcc": [int(i.tx.mcc) for i in items], "is_fraud": [i.is_fraud for i in items],
    })
    path = tmp_path / "history.parquet"
    pq.write_table(table, path)
    loaded = load_labeled_transactions(path, {"card_id": "card"})
    assert loaded.format == "parquet" and loaded.rejects == []
    assert [tx for tx, _ in loaded.items] == [i.tx for i in items_by_time]
    assert [label for _, label in loaded.items] == [i.is_fraud for i in items_by_time]

    with pytest.raises(ValueError, match="missing column"):
        load_labeled_transactions(path)  # card_id is in column "card"
    with pytest.raises(ValueError, match="unknown transaction field"):
        load_labeled_transactions(path, {"card": "card"})
    with pytest.raises(ValueError, match="missing column"):
        load_labeled_transactions(path, {"card_id": "card"}, label_column="chargeback")


def test_train_help_and_docstring_document_the_columns(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    doc = load_labeled_transactions.__doc__ or ""
    for name in (*TX_FIELDS, "is_fraud"):
        assert f"\n  {name} " in text, name
        assert f"\n    {name} " in doc, name
    for flag in ("--data", "--column", "--label-column", "--force", REJECTS_FILE):
        assert flag in text, flag


def test_cli_rejects_a_malformed_column_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path / "x.csv"), "--column", "amount", "--output-dir",
                 str(tmp_path)]) == 2
    assert "FIELD=COLUMN" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("tx_id,amount\n")
    assert main(["train", "--data", str(tmp_path / "x.csv"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "missing column" in capsys.readouterr().err


def test_metrics_against_known_values() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx((1 + 2 / 3) / 2)


def test_label_time_column_sets_when_each_label_arrived(tmp_path: Path) -> None:
    """A label_time column is when the label became known: read per row (empty: the delay applies), a time
    before the transaction or unreadable is a reject, and the replay folds each label in at that time."""
    from stream_app.offline.replay import replay

    header = "tx_id,card_id,merchant_id,amount,currency,timestamp,country,channel,mcc,is_fraud,label_time\n"
    rows = ["a1,c1,m1,10,EUR,2026-01-01T10:00:00Z,FR,pos,5411,1,2026-01-01T11:00:00Z",
            "a2,c1,m1,10,EUR,2026-01-01T10:30:00Z,FR,pos,5411,0,",
            "a3,c1,m1,10,EUR,2026-01-01T12:00:00Z,FR,pos,5411,0,2026-01-01T11:00:00Z",
            "a4,c1,m1,10,EUR,2026-01-01T12:30:00Z,FR,pos,5411,0,soon"]
    path = tmp_path / "labelled.csv"
    path.write_text(header + "\n".join(rows) + "\n")
    loaded = load_labeled_transactions(path)
    assert [r["reason"] for r in loaded.rejects] == ["invalid_label_time", "invalid_label_time"]
    assert [tx.tx_id for tx, _ in loaded.items] == ["a1", "a2"]
    assert loaded.label_times == [1_767_265_200_000, None]  # 2026-01-01T11:00Z, and the delay for a2
    later = [*loaded.items, (Transaction("a5", "c1", "m1", 10.0, "EUR", 1_767_268_800_000, "FR", "pos", "5411"), False)]
    data = replay(later, 7 * 86_400_000, label_times=[*loaded.label_times, None], progress=False)
    card_frauds = data.x[:, list(MODEL_FEATURES).index("card_fraud_labels_30d")]
    assert card_frauds.tolist() == [0, 0, 1]  # a5 at 12:00 comes after a1's label at 11:00
    assert data.label_ms[1] == data.ts_ms[1] + 7 * 86_400_000


def test_all_history_refits_the_evaluated_recipe_on_every_mature_row(tmp_path: Path) -> None:
    """The production retrain: held-out metrics as usual, then the exported model is the same recipe fitted
    on all rows whose labels had arrived by the data's end (the last label-delay's rows left out)."""
    card = train_and_export(TrainConfig(**SMALL, n_estimators=20, output_dir=str(tmp_path), all_history=True))
    fit = card["final_fit"]
    assert card["metrics"]["test"]["roc_auc"] > 0.9  # the evaluation of the recipe, on its held-out period
    assert fit["left_out_immature"] > 0 and fit["rows"] > 0 and fit["frauds"] > 0
    assert fit["period"][1] < card["training_data"]["periods"]["test"][1]  # the newest rows: labels not in yet
    assert fit["rows"] > card["metrics"]["train"]["rows"]  # more history than the evaluated model saw
    scorer = OnnxScorer.load(tmp_path / "fraud_gbt.onnx")  # the refitted file matches its card
    assert scorer.version == card["version"] and card["drift_reference"]["in_sample"] is True
