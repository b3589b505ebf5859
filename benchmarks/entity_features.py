"""What merchant profiles add to card features, under the field's delayed-label protocol, on generated data.

Transactions and their labels are replayed in *arrival* order (each label arrives when
``generator.label_delay_ms`` says: a fixed 7 days by default, or a chargeback-like range of days for fraud
labels), through the service's own replay (``stream_app.offline.replay``, what ``stream-app train`` runs: card features,
merchant profiles, label-derived card risk), so no feature sees a label from its future.

Protocol (the Fraud Detection Handbook's): after a warm-up that fills the 30-day windows, a LightGBM model is
trained on ``--train-days`` (>= 7) of transactions, the label delay is skipped (the model is trained when the
training period's labels are in), and the next ``--test-days`` are the test. A training row is labelled as
known at training time: a fraud whose label has not arrived yet counts as legit, as it would in production.
Reported for card-only features and card + merchant features, in one run, overall and per fraud scenario
(that scenario's frauds against every legit transaction): ROC AUC, average precision and card precision@k per
day (the k riskiest cards of each day, cards detected on earlier days left out; a card counts for a scenario
only if it had a fraud of that scenario that day). Then, for compromised merchants, the figures that explain
the margin: episodes per period, how many test frauds came before any label from their merchant, and which
features the model used.

"entities" is the vector the service serves (``MODEL_FEATURES``); "card" its first ``len(FEATURE_NAMES)`` columns.
Run: python benchmarks/entity_features.py [--customers 3000] [--train-days 35] [--test-days 7]
                                          [--label-delay-days 7] [--fraud-delay-days MIN MAX] [--k 100]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_app.devtools.generator import (
    EXTRA_PATTERNS,
    FRAUD_PATTERNS,
    GeneratorConfig,
    LabelDelay,
    LabeledTx,
    label_delay_ms,
    simulate,
)
from stream_app.domain.entities import EntityTable, entity_feature_names
from stream_app.domain.features import DAY_MS, FEATURE_NAMES
from stream_app.domain.profiles import RiskSettings
from stream_app.offline.evaluation import average_precision, precision_top_k_cards_per_day, roc_auc
from stream_app.offline.replay import replay as service_replay

MERCHANT_NAMES = entity_feature_names()  # the merchant's features, then the card's label-derived risk
HORIZON_MS = 7 * DAY_MS
PATTERNS = FRAUD_PATTERNS + EXTRA_PATTERNS
ALL = "all"


@dataclass
class Replay:
    rows_card: list[list[float]]
    rows_merchant: list[list[float]]
    items: list[LabeledTx]
    label_at: list[int]  # when each scored transaction's label arrived


def replay(items: list[LabeledTx], delay: LabelDelay, risk: RiskSettings) -> Replay:
    """Transactions and labels merged in arrival order through the service's own replay (the code
    ``stream-app train`` uses: card features, then the entity table's), each row before its update."""
    arrival = [x.tx.ts_ms + label_delay_ms(x, delay) for x in items]
    skipped: set[int] = set()  # a duplicate or late event: not scored, as in the stream
    data = service_replay([(x.tx, x.is_fraud) for x in items], HORIZON_MS, label_times=arrival, progress=False,
                          on_invalid=lambda i, _: skipped.add(i), table=EntityTable(risk=risk))
    kept = [i for i in range(len(items)) if i not in skipped]
    n_card = len(FEATURE_NAMES)
    return Replay(data.x[:, :n_card].tolist(), data.x[:, n_card:].tolist(), [items[i] for i in kept],
                  [arrival[i] for i in kept])


def card_precision_by_scenario(days: np.ndarray, cards: np.ndarray, patterns: np.ndarray, scores: np.ndarray,
                               k: int) -> dict[str, float]:
    """Card precision@k per day (cards detected on earlier days left out), overall and credited per scenario:
    a top-k card counts for a scenario only if it had a fraud of that scenario that day."""
    hits: dict[str, list[float]] = defaultdict(list)
    known: set[str] = set()
    for day in np.unique(days):
        best: dict[str, float] = {}
        kinds: dict[str, set[str]] = defaultdict(set)
        for i in np.flatnonzero(days == day):
            card = cards[i]
            if card in known:
                continue
            best[card] = max(best.get(card, -math.inf), scores[i])
            if patterns[i]:
                kinds[card].add(patterns[i])
        top = sorted(best, key=best.__getitem__, reverse=True)[:k]
        if not top:
            continue
        hits[ALL].append(sum(bool(kinds[c]) for c in top) / k)
        for pattern in PATTERNS:
            hits[pattern].append(sum(pattern in kinds[c] for c in top) / k)
        known.update(c for c in top if kinds[c])
    return {key: float(np.mean(v)) for key, v in hits.items()}


def metrics(test: list[LabeledTx], scores: np.ndarray, k: int) -> dict[str, dict[str, float]]:
    """AUC, AP and CP@k, overall and per scenario (the scenario's frauds against every legit transaction)."""
    y = np.array([x.is_fraud for x in test])
    patterns = np.array([x.pattern or "" for x in test])
    days = np.array([x.tx.ts_ms // DAY_MS for x in test])
    cards = np.array([x.tx.card_id for x in test])
    cp = card_precision_by_scenario(days, cards, patterns, scores, k)
    assert math.isclose(cp[ALL], precision_top_k_cards_per_day(days, cards, y, scores, k, drop_known=True))
    out = {ALL: {"auc": roc_auc(y, scores), "ap": average_precision(y, scores), "cp": cp[ALL]}}
    for pattern in PATTERNS:
        keep = (patterns == pattern) | ~y
        if (patterns == pattern).any():
            out[pattern] = {"auc": roc_auc(y[keep], scores[keep]), "ap": average_precision(y[keep], scores[keep]),
                            "cp": cp[pattern]}
    return out


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int) -> tuple[np.ndarray, Any]:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=31, subsample=0.8, subsample_freq=1,
                               colsample_bytree=0.8, random_state=seed, verbose=-1, importance_type="gain")
    model.fit(x_train, y_train)
    return np.asarray(model.predict_proba(x_test))[:, 1], model


def explain_compromised_merchant(r: Replay, train: np.ndarray, test: np.ndarray, scores: dict[str, np.ndarray],
                                 model: Any) -> None:
    """Why the margin on compromised merchants is what it is: how much of it the test can show at all."""
    pattern = "compromised_merchant"
    episodes: dict[str, list[int]] = defaultdict(list)
    for x in r.items:
        if x.pattern == pattern:
            episodes[x.tx.merchant_id].append(x.tx.ts_ms)
    in_train = {x.tx.merchant_id for x, keep in zip(r.items, train, strict=True) if keep and x.pattern == pattern}
    in_test = {x.tx.merchant_id for x, keep in zip(r.items, test, strict=True) if keep and x.pattern == pattern}
    print(f"{pattern}: {len(episodes)} shops in the run, {len(in_train)} with frauds in training, {len(in_test)} "
          f"in the test ({len(in_test & in_train)} of them also in training)")
    test_items = [x for x, keep in zip(r.items, test, strict=True) if keep]
    merchant = np.array(r.rows_merchant)[test]
    labels_30d = merchant[:, MERCHANT_NAMES.index("merchant_fraud_labels_30d")]
    is_cm = np.array([x.pattern == pattern for x in test_items])
    legit = np.array([not x.is_fraud for x in test_items])
    seen = is_cm & (labels_30d > 0)
    print(f"  test frauds {int(is_cm.sum())}: {int(seen.sum())} after a fraud label from their shop had arrived "
          f"(30 d), {int((is_cm & ~seen).sum())} before any")
    for name, subset in (("after a label", seen), ("before any label", is_cm & ~seen)):
        if subset.any():
            keep = subset | legit
            y = subset[keep]
            print(f"  AUC {name:<17}" + "  ".join(f"{model_name} {roc_auc(y, s[keep]):.3f}"
                                                   for model_name, s in scores.items()))
    names = list(FEATURE_NAMES) + list(MERCHANT_NAMES)
    gains = model.booster_.feature_importance(importance_type="gain")
    share = gains / gains.sum()
    top = sorted(range(len(names)), key=lambda j: -share[j])[:8]
    print("  card+merchant model, gain share: " + ", ".join(f"{names[j]} {share[j]:.2f}" for j in top)
          + f"; all merchant features {share[len(FEATURE_NAMES):].sum():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--warmup-days", type=int, default=14, help="first days, not trained on (cold windows)")
    parser.add_argument("--train-days", type=int, default=35, help=">= 7")
    parser.add_argument("--test-days", type=int, default=7)
    parser.add_argument("--label-delay-days", type=float, default=7.0,
                        help="delay of every label (legit labels' delay when --fraud-delay-days is given); "
                             "also the gap skipped between training and test")
    parser.add_argument("--fraud-delay-days", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="fraud labels arrive uniformly MIN-MAX days late (chargebacks)")
    parser.add_argument("--fraud-rate", type=float, default=0.01)
    parser.add_argument("--k", type=int, default=100, help="cards reviewed per day (card precision@k)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.train_days < 7 or args.test_days < 1:
        parser.error("need --train-days >= 7 and --test-days >= 1")

    t0 = time.perf_counter()
    fraud_lo, fraud_hi = args.fraud_delay_days or (args.label_delay_days, args.label_delay_days)
    delay = LabelDelay(fraud_lo, fraud_hi, args.label_delay_days)
    gap_ms = int(args.label_delay_days * DAY_MS)
    days = args.warmup_days + args.train_days + math.ceil(args.label_delay_days) + args.test_days
    config = GeneratorConfig(seed=args.seed, n_customers=args.customers, fraud_rate=args.fraud_rate,
                             patterns=PATTERNS)
    items = list(simulate(config, days=days))
    # Merchant fraud shares count transactions old enough for their fraud labels: the earliest a fraud label comes.
    risk = RiskSettings(maturity_days=math.ceil(fraud_lo))
    r = replay(items, delay, risk)
    print(f"{len(items)} transactions ({sum(x.is_fraud for x in items)} fraud) over {days} days, replayed with "
          f"fraud labels {fraud_lo:g}-{fraud_hi:g} days late, legit labels {args.label_delay_days:g}, "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)

    train_start = config.start_ms + args.warmup_days * DAY_MS
    train_end = train_start + args.train_days * DAY_MS
    test_start = train_end + gap_ms  # the model is trained once the training period's labels are in
    test_end = test_start + args.test_days * DAY_MS
    ts = np.array([x.tx.ts_ms for x in r.items])
    train = (ts >= train_start) & (ts < train_end)
    test = (ts >= test_start) & (ts < test_end)
    y_known = np.array([x.is_fraud for x in r.items]) & (np.array(r.label_at) <= test_start)
    card = np.array(r.rows_card)
    both = np.hstack([card, np.array(r.rows_merchant)])
    test_items = [x for x, keep in zip(r.items, test, strict=True) if keep]
    print(f"train {int(train.sum())} rows ({int(y_known[train].sum())} frauds known at training, "
          f"{sum(x.is_fraud for x, keep in zip(r.items, train, strict=True) if keep)} true), test {int(test.sum())} "
          f"rows ({sum(x.is_fraud for x in test_items)} fraud); features: card {len(FEATURE_NAMES)}, "
          f"card+merchant {len(FEATURE_NAMES) + len(MERCHANT_NAMES)}", flush=True)
    scores: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    model = None
    for name, x in (("card", card), ("entities", both)):
        scores[name], model = fit_predict(x[train], y_known[train], x[test], args.seed)
        results[name] = metrics(test_items, scores[name], args.k)

    n_fraud = {p: sum(x.pattern == p for x in test_items) for p in PATTERNS}
    n_fraud[ALL] = sum(n_fraud.values())
    # Distinct defrauded cards per test day: CP@k of a scenario cannot exceed this / k.
    cards_per_day = {p: len({(x.tx.ts_ms // DAY_MS, x.tx.card_id) for x in test_items if p in (x.pattern, ALL)
                             and x.is_fraud}) / args.test_days for p in (ALL, *PATTERNS)}
    k = args.k
    print(f"\n{'scenario':<22}{'frauds':>7}{'cards/d':>8}  {'AUC card':>9}{'entities':>9}  {'AP card':>8}"
          f"{'entities':>9}  {f'CP@{k} card':>11}{'entities':>9}")
    for scenario in (ALL, *PATTERNS):
        if scenario in results["card"]:
            a, b = results["card"][scenario], results["entities"][scenario]
            print(f"{scenario:<22}{n_fraud[scenario]:>7}{cards_per_day[scenario]:>8.1f}  {a['auc']:>9.3f}"
                  f"{b['auc']:>9.3f}  {a['ap']:>8.3f}{b['ap']:>9.3f}  {a['cp']:>11.3f}{b['cp']:>9.3f}")
    print()
    explain_compromised_merchant(r, train, test, scores, model)
    print("RESULT " + " ".join(f"{metric}_{scenario}_{name}={results[name][scenario][metric]:.3f}"
                               for scenario in results["card"] for metric in ("auc", "ap", "cp")
                               for name in ("card", "entities")) + f" k={k}")


if __name__ == "__main__":
    main()
