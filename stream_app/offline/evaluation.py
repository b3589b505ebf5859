"""Quality metrics for a fraud model, in plain numpy: used by training and by tests.

Precision among the top-k cards per day is what a fixed-size analyst team experiences; ROC AUC and
average precision summarise the whole ranking (AP is the one that notices class imbalance).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties; NaN when only one class is present."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average ranks over runs of equal scores: run k spans sorted positions [start, end), its rank (start+end+1)/2
    _, run, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + ends + 1) / 2.0)[run]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Mean of the precision at the rank of each positive (scores sorted high to low)."""
    y = np.asarray(y_true, dtype=bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=float), kind="mergesort")
    hits = y[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def precision_top_k_cards_per_day(days: np.ndarray, cards: np.ndarray, y_true: np.ndarray,
                                  scores: np.ndarray, k: int, *, drop_known: bool = False) -> float:
    """Each day, rank cards by their highest score; the share of the top k that had a fraud.

    ``drop_known``: the field's *card precision@k* (the Fraud Detection Handbook's protocol) — a card
    detected as compromised on an earlier day (a fraud among that day's top k) is left out of later days'
    rankings: it is blocked already, and reviewing it again finds nothing new."""
    per_day = []
    known: set[object] = set()
    for day in np.unique(days):
        mask = days == day
        best: dict[object, tuple[float, bool]] = {}
        for card, score, label in zip(cards[mask], scores[mask], y_true[mask], strict=True):
            if drop_known and card in known:
                continue
            old = best.get(card)
            best[card] = (max(score, old[0]) if old else score, bool(label) or (old[1] if old else False))
        top = sorted(best.items(), key=lambda kv: kv[1][0], reverse=True)[:k]
        if top:
            per_day.append(sum(fraud for _, (_, fraud) in top) / k)
        known.update(card for card, (_, fraud) in top if fraud)
    return float(np.mean(per_day)) if per_day else float("nan")
