"""Offline training of the ONNX model on generated history, with a temporal protocol.

History is replayed in event-time order through the same ``featurize`` the stream uses. The split
is by time: train on the first period, skip a gap as long as the label delay (those labels would not
be known yet when training), test on the period after. The model is exported to ONNX with a model
card that records what it was trained on, how it scored and the sha256 of the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.evaluation import average_precision, precision_top_k_cards_per_day, roc_auc
from stream_app.events import InvalidEvent, format_ts
from stream_app.features import DAY_MS, FEATURE_NAMES, CardState, featurize
from stream_app.generator import GeneratorConfig, simulate
from stream_app.models.onnx_model import PACKAGED_MODEL, card_path, packaged_model_path, sha256_file


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int = 7
    n_customers: int = 3000
    days: int = 60
    label_delay_days: int = 7
    test_days: int = 14
    n_estimators: int = 150
    top_k_cards: int = 20
    output_dir: str | None = None
    dedup_horizon_s: int = 7 * 86400


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [n, n_features]
    y: np.ndarray  # int8
    ts_ms: np.ndarray
    cards: np.ndarray


def build_dataset(config: GeneratorConfig, days: float, horizon_ms: int, progress: bool = True) -> Dataset:
    states: dict[str, CardState] = {}
    rows: list[list[float]] = []
    labels: list[int] = []
    ts: list[int] = []
    cards: list[str] = []
    started = time.monotonic()
    for i, item in enumerate(simulate(config, days=days)):
        try:
            rows.append(featurize(states, item.tx, horizon_ms))
        except InvalidEvent:
            continue
        labels.append(int(item.is_fraud))
        ts.append(item.tx.ts_ms)
        cards.append(item.tx.card_id)
        if progress and i and i % 100_000 == 0:
            rate = i / (time.monotonic() - started)
            print(f"  featurized {i:,} transactions ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    return Dataset(np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int8),
                   np.asarray(ts, dtype=np.int64), np.asarray(cards))


def evaluate(y: np.ndarray, scores: np.ndarray, ts_ms: np.ndarray, cards: np.ndarray, k: int) -> dict[str, float]:
    return {
        "rows": int(len(y)),
        "frauds": int(y.sum()),
        "roc_auc": roc_auc(y, scores),
        "average_precision": average_precision(y, scores),
        f"precision_top_{k}_cards_per_day": precision_top_k_cards_per_day(ts_ms // DAY_MS, cards, y, scores, k),
    }


def feature_stats(x: np.ndarray, y: np.ndarray, importance: np.ndarray) -> dict[str, dict[str, float]]:
    legit, fraud = x[y == 0], x[y == 1]
    share = importance / importance.sum() if importance.sum() > 0 else importance
    return {
        name: {
            "legit_mean": float(legit[:, i].mean()),
            "legit_std": float(legit[:, i].std()),
            "fraud_mean": float(fraud[:, i].mean()) if len(fraud) else 0.0,
            "importance": float(share[i]),
        }
        for i, name in enumerate(FEATURE_NAMES)
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def train_and_export(cfg: TrainConfig) -> dict[str, Any]:
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    from stream_app.models.onnx_model import OnnxScorer

    gen = GeneratorConfig(seed=cfg.seed, n_customers=cfg.n_customers)
    print(f"generating {cfg.days} days of history for {cfg.n_customers} customers ...", file=sys.stderr)
    data = build_dataset(gen, cfg.days, cfg.dedup_horizon_s * 1000)
    day = (data.ts_ms - gen.start_ms) // DAY_MS
    train_end = cfg.days - cfg.test_days - cfg.label_delay_days
    train, test = day < train_end, day >= cfg.days - cfg.test_days
    if train_end <= 0 or not data.y[train].any() or not data.y[test].any():
        raise ValueError("not enough history: raise --days or the fraud rate")

    model = lgb.LGBMClassifier(
        n_estimators=cfg.n_estimators, learning_rate=0.05, num_leaves=31, min_child_samples=50,
        subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=cfg.seed,
        deterministic=True, force_row_wise=True, n_jobs=2, verbose=-1)
    print(f"training on {int(train.sum()):,} rows ({int(data.y[train].sum())} frauds) ...", file=sys.stderr)
    model.fit(data.x[train], data.y[train])

    out_dir = Path(cfg.output_dir) if cfg.output_dir else packaged_model_path().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / PACKAGED_MODEL
    onnx_model = onnxmltools.convert_lightgbm(
        model, initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
        zipmap=False, target_opset=15)
    model_path.write_bytes(onnx_model.SerializeToString())
    digest = sha256_file(model_path)

    importance = model.booster_.feature_importance(importance_type="gain").astype(float)
    card: dict[str, Any] = {
        "name": "fraud-gbt",
        "version": f"gbt-{datetime.now(UTC):%Y%m%d}-{digest[:8]}",
        "created_at": format_ts(int(time.time() * 1000)),
        "framework": f"lightgbm {lgb.__version__} -> onnxmltools {onnxmltools.__version__}",
        "feature_names": list(FEATURE_NAMES),
        "input": {"name": "features", "dtype": "float32", "shape": [None, len(FEATURE_NAMES)]},
        "output": "probabilities[:, 1] = P(fraud)",
        "training_data": {
            "source": "stream_app.generator (synthetic, generated at training time)",
            "generator": asdict(gen),
            "days": cfg.days,
            "periods_days": {"train": [0, train_end], "gap (label delay)": [train_end, cfg.days - cfg.test_days],
                             "test": [cfg.days - cfg.test_days, cfg.days]},
        },
        "params": model.get_params(),
        "feature_stats": feature_stats(data.x[train], data.y[train], importance),
        "sha256": digest,
        "code": {"module": "stream_app.training", "git_commit": _git_commit(),
                 "command": f"stream-app train --days {cfg.days} --customers {cfg.n_customers} "
                            f"--trees {cfg.n_estimators} --seed {cfg.seed}"},
    }
    card_path(model_path).write_text(json.dumps(card, indent=2, default=str))

    scorer = OnnxScorer.load(model_path)  # the served path: checks card, sha256 and feature order
    onnx_test = np.asarray(scorer.predict_proba_many(data.x[test].tolist()))
    lgb_test = model.predict_proba(data.x[test])[:, 1]
    k = cfg.top_k_cards
    card["metrics"] = {
        "train": evaluate(data.y[train], model.predict_proba(data.x[train])[:, 1], data.ts_ms[train],
                          data.cards[train], k),
        "test": evaluate(data.y[test], onnx_test, data.ts_ms[test], data.cards[test], k),
    }
    card["onnx_parity_max_abs_diff"] = float(np.max(np.abs(onnx_test - lgb_test)))
    card_path(model_path).write_text(json.dumps(card, indent=2, default=str))
    print(json.dumps(card["metrics"], indent=2), file=sys.stderr)
    return card
