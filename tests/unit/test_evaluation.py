"""The field's card precision@k per day."""

from __future__ import annotations

import numpy as np

from stream_app.offline.evaluation import precision_top_k_cards_per_day


def test_card_precision_at_k_drops_cards_detected_on_earlier_days() -> None:
    # day 0: card a (fraud) ranks first; day 1: a again (still fraud) and b (fraud, ranked lower), c legit
    days = np.array([0, 0, 1, 1, 1])
    cards = np.array(["a", "c", "a", "b", "c"])
    y = np.array([1, 0, 1, 1, 0])
    scores = np.array([0.9, 0.1, 0.95, 0.5, 0.6])
    assert precision_top_k_cards_per_day(days, cards, y, scores, 1) == 1.0  # a found twice
    assert precision_top_k_cards_per_day(days, cards, y, scores, 1, drop_known=True) == 0.5  # day 1: c outranks b
