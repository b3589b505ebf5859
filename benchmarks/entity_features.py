"""What merchant profiles add to card features, under the field's protocol, on generated data.

Transactions and their labels are replayed in *arrival* order (a label arrives ``--label-delay-days``
after its transaction), through the same code the service uses for card features
(``domain.features.featurize``) and the entity profiles (``domain.profiles``), so no feature sees a label
from its future. A LightGBM model is trained on the first days (only rows whose labels had arrived by the
end of the training period), a gap as long as the label delay is skipped, and the days after are the test.
Reported for card-only features and for card + merchant features, in one run: ROC AUC, average precision,
card precision@k per day, and AUC per fraud pattern (each pattern's frauds against every legit transaction).

The entity profiles are not wired into the worker yet (issue 13): this measures what they would add.
Run: python benchmarks/entity_features.py [--customers 3000] [--days 70] [--train-days 42] [--label-delay-days 7]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from stream_app.devtools.generator import EXTRA_PATTERNS, FRAUD_PATTERNS, GeneratorConfig, LabeledTx, simulate
from stream_app.domain.features import DAY_MS, FEATURE_NAMES, CardState, featurize
from stream_app.domain.profiles import (
    EntitySpec,
    Profile,
    RiskSettings,
    add_compromise_evidence,
    compromise_suspects,
    feature_names,
    features,
    learn_label,
    new_profile,
    observe,
)
from stream_app.offline.evaluation import average_precision, precision_top_k_cards_per_day, roc_auc

MERCHANT = EntitySpec("merchant", "merchant_id")
HORIZON_MS = 7 * DAY_MS


@dataclass
class Replay:
    rows_card: list[list[float]]
    rows_merchant: list[list[float]]
    items: list[LabeledTx]


def replay(items: list[LabeledTx], delay_ms: int, risk: RiskSettings) -> Replay:
    """Transactions and labels merged in arrival order; each transaction's features before its update."""
    events = [(x.tx.ts_ms, 1, i) for i, x in enumerate(items)] + [(x.tx.ts_ms + delay_ms, 0, i)
                                                                   for i, x in enumerate(items)]
    events.sort()  # a label arriving at the same millisecond as a transaction comes first: it had arrived
    cards: dict[str, CardState] = {}
    merchants: dict[str, Profile] = {}
    first_fraud: dict[str, int] = {}
    out = Replay([], [], [])
    n_tx = n_fraud_labels = 0
    for _, kind, i in events:
        item = items[i]
        tx = item.tx
        if kind == 1:
            try:
                card_row = featurize(cards, tx, HORIZON_MS)
            except Exception:  # a duplicate or late event: not scored, as in the stream
                continue
            profile = merchants.setdefault(tx.merchant_id, new_profile())
            prior = (n_fraud_labels + 1) / (n_tx + 100)  # the global rate so far, of arrived labels
            out.rows_card.append(card_row)
            out.rows_merchant.append(features(profile, tx, prior, risk))
            out.items.append(item)
            observe(profile, tx)
            n_tx += 1
        elif item.is_fraud:
            n_fraud_labels += 1
            learn_label(merchants.setdefault(tx.merchant_id, new_profile()), tx.ts_ms, tx.ts_ms + delay_ms, True)
            if tx.card_id not in first_fraud and tx.card_id in cards:  # the card's first fraud label
                first_fraud[tx.card_id] = tx.ts_ms
                for suspect in compromise_suspects(cards[tx.card_id], tx.ts_ms):
                    add_compromise_evidence(merchants.setdefault(suspect, new_profile()), tx.ts_ms + delay_ms)
    return out


def evaluate(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, test: list[LabeledTx],
             k: int, seed: int) -> dict[str, float]:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=31, subsample=0.8, subsample_freq=1,
                               colsample_bytree=0.8, random_state=seed, verbose=-1)
    model.fit(x_train, y_train)
    scores = model.predict_proba(x_test)[:, 1]
    y = np.array([x.is_fraud for x in test])
    days = np.array([x.tx.ts_ms // DAY_MS for x in test])
    card_ids = np.array([x.tx.card_id for x in test])
    result = {"auc": roc_auc(y, scores), "ap": average_precision(y, scores),
              f"cp@{k}": precision_top_k_cards_per_day(days, card_ids, y, scores, k, drop_known=True)}
    legit = ~y
    for pattern in FRAUD_PATTERNS + EXTRA_PATTERNS:
        mask = np.array([x.pattern == pattern for x in test])
        if mask.any():
            keep = mask | legit
            result[f"auc_{pattern}"] = roc_auc(y[keep], scores[keep])
    print(f"{name:<16}" + "  ".join(f"{key}={value:.3f}" for key, value in result.items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=int, default=70)
    parser.add_argument("--train-days", type=int, default=42)
    parser.add_argument("--label-delay-days", type=int, default=7)
    parser.add_argument("--warmup-days", type=int, default=7, help="first days left out of training (cold profiles)")
    parser.add_argument("--fraud-rate", type=float, default=0.01)
    parser.add_argument("--k", type=int, default=50, help="cards reviewed per day (card precision@k)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    t0 = time.perf_counter()
    config = GeneratorConfig(seed=args.seed, n_customers=args.customers, fraud_rate=args.fraud_rate,
                             patterns=FRAUD_PATTERNS + EXTRA_PATTERNS)
    items = list(simulate(config, days=args.days))
    delay_ms = args.label_delay_days * DAY_MS
    risk = RiskSettings(maturity_days=args.label_delay_days)
    r = replay(items, delay_ms, risk)
    print(f"{len(items)} transactions ({sum(x.is_fraud for x in items)} fraud), replayed with labels "
          f"{args.label_delay_days} days late in {time.perf_counter() - t0:.1f} s", flush=True)

    start = config.start_ms
    train_end = start + args.train_days * DAY_MS
    test_start = train_end + delay_ms  # the gap: labels of the last training days are not known at training
    ts = np.array([x.tx.ts_ms for x in r.items])
    # Training rows: after the warm-up, labels arrived by the end of the training period.
    train = (ts >= start + args.warmup_days * DAY_MS) & (ts + delay_ms <= train_end)
    test = ts >= test_start
    y = np.array([x.is_fraud for x in r.items])
    card = np.array(r.rows_card)
    both = np.hstack([card, np.array(r.rows_merchant)])
    test_items = [x for x, keep in zip(r.items, test, strict=True) if keep]
    print(f"train {int(train.sum())} rows ({int(y[train].sum())} fraud), test {int(test.sum())} rows "
          f"({int(y[test].sum())} fraud); features: card {len(FEATURE_NAMES)}, "
          f"card+merchant {len(FEATURE_NAMES) + len(feature_names(MERCHANT))}", flush=True)
    a = evaluate("card only", card[train], y[train], card[test], test_items, args.k, args.seed)
    b = evaluate("card+merchant", both[train], y[train], both[test], test_items, args.k, args.seed)
    print("RESULT " + " ".join(f"{key}_card={a[key]:.3f} {key}_entities={b[key]:.3f}" for key in a))


if __name__ == "__main__":
    main()
