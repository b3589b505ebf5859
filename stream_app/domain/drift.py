"""Drift of the live features and scores against the distribution the offline model was trained on.

Training stores a binned picture of its rows in the model card (``reference_from_rows``); a worker
feeds every scored micro-batch to a ``DriftMonitor``, which keeps per-bin counts over a sliding window
of recent rows and computes the Population Stability Index (PSI) of each feature and of the score.
It reports transitions only (drift detected / resolved, with hysteresis), so a lasting drift is one
event, not one per batch. Pure numpy: metrics and logs are wired by the caller.

Values are binned as float32, the precision the model sees and the training set is stored in, so a
value equal to a bin edge lands in the same bin at training and at serving time.

Cold start. The reference is taken on cards with a full history, while a new worker starts with empty
card states: its counts over 7 / 30 days, first uses of a merchant, time since the previous payment are
those of cards it has only just met, which looks like drift on 13-20 features within seconds. So each
histogram is compared only with rows of the same kind: features of the transaction alone
(``TRANSACTION_ONLY_FEATURES``) with every row, the history features and the score only with rows of a
*warm* card, one whose state has watched it for ``WARM_DAYS`` (the longest window), at training time
and at serving time alike (``is_warm``). The reference records that filter; one without it is refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from stream_app.domain.entities import MODEL_FEATURES
from stream_app.domain.features import DAY_MS, CardState
from stream_app.domain.features import FEATURE_NAMES as CARD_FEATURE_NAMES

SCORE: Final = "score"
#: Not monitored by default: a window of recent rows covers a slice of the clock (minutes to days),
#: never the whole day and week the training data spans, so their PSI would be high without drift.
CALENDAR_FEATURES: Final = ("hour_of_day", "weekday")
#: Added to every bin's proportion: an empty bin would make PSI infinite.
EPSILON: Final = 1e-4
#: Features computed from the transaction alone: the same for a card met a second ago or years ago.
TRANSACTION_ONLY_FEATURES: Final = ("amount_eur", "log_amount", "hour_of_day", "weekday", "is_ecom", "is_atm",
                                    "is_moto")
#: A card's history features are those of full history once its state has watched it this long: the
#: longest window (30 d counts and amounts) and the merchant memory (30 d) are then complete.
WARM_DAYS: Final = 30
#: The name of the row filter a reference must record (``reference["filter"]["name"]``).
WARM_FILTER: Final = "warm_card"


def is_warm(state: CardState, ts_ms: int, min_history_days: float = WARM_DAYS) -> bool:
    """Whether a card state (before or after the transaction at ``ts_ms``: ``first_ts`` never changes)
    has watched the card for ``min_history_days``. Training and the worker both call this."""
    first = state.first_ts
    return first is not None and ts_ms - first >= min_history_days * DAY_MS


@dataclass(frozen=True, slots=True)
class DriftEvent:
    name: str  # a feature name or "score"
    psi: float
    detected: bool  # True: PSI crossed the threshold upward; False: it fell back below the resolve level


def _histogram(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    """Quantile edges taken among the values themselves, bins closed on the right.

    An edge is a data value and its bin ends at it, so a point mass (zero counts, flags, an hour)
    stays whole in one bin; a feature with at most ``bins`` distinct values gets one bin per value.
    """
    distinct = np.unique(values)
    if len(distinct) <= bins:
        edges = distinct[:-1]
    else:
        edges = np.unique(np.quantile(values, np.arange(1, bins) / bins, method="inverted_cdf"))
        edges = edges[edges < distinct[-1]]  # an edge at the maximum would leave the last bin empty
    edges = edges.astype(np.float32)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "proportions": (counts / len(values)).tolist()}


def reference_from_rows(x: np.ndarray, scores: np.ndarray | None, warm: np.ndarray, bins: int = 10,
                        min_history_days: float = WARM_DAYS, names: Sequence[str] = MODEL_FEATURES) -> dict[str, Any]:
    """JSON-serialisable binned distribution of training rows (and of the model's scores on them),
    for the model card's ``"drift_reference"``: transaction-only features over all rows, history
    features and the score over the rows whose card was warm (``warm``: ``is_warm`` of each row).
    Without warm rows (a history shorter than ``min_history_days`` before its test period) only the
    transaction-only features are recorded: nothing says what a warm card looks like."""
    values = np.asarray(x, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != len(names) or len(values) == 0:
        raise ValueError(f"x must be a non-empty [n, {len(names)}] array, got shape {values.shape}")
    if bins < 2:
        raise ValueError("bins must be >= 2")
    if not np.isfinite(values).all():
        raise ValueError("x has non-finite values")
    warm = np.asarray(warm, dtype=bool)
    if warm.shape != (len(values),):
        raise ValueError("warm must flag each row of x")
    history = [name for name in names if name not in TRANSACTION_ONLY_FEATURES]
    recorded = [(i, name) for i, name in enumerate(names) if warm.any() or name not in history]
    reference: dict[str, Any] = {
        "rows": len(values),
        "filter": {"name": WARM_FILTER, "min_history_days": min_history_days, "rows": int(warm.sum()),
                   "applies_to": [*history, *([SCORE] if scores is not None else [])],
                   "rule": "history features and the score: only rows of cards whose state has watched "
                           "them for min_history_days (stream_app.domain.drift.is_warm); other features: all rows"},
        "features": {name: _histogram(values[warm if name in history else slice(None), i], bins)
                     for i, name in recorded},
    }
    if scores is not None and warm.any():
        s = np.asarray(scores, dtype=np.float32)
        if s.shape != (len(values),) or not np.isfinite(s).all():
            raise ValueError("scores must be finite, one per row of x")
        reference[SCORE] = _histogram(s[warm], bins)
    return reference


class _Window:
    """Per-bin counts of some columns over the last ``window`` rows added.

    Memory is bounded by the window: a ring of each row's bin indices and the per-bin counts it sums
    to; a batch adds its rows' counts and subtracts those of the rows it pushes out, so an update costs
    O(columns) per row whatever the window.
    """

    def __init__(self, histograms: Sequence[Mapping[str, Any]], window: int) -> None:
        self._edges = [np.asarray(h["edges"], dtype=np.float32) for h in histograms]
        sizes = np.array([len(e) + 1 for e in self._edges], dtype=np.int64)
        if any(len(h["proportions"]) != size for h, size in zip(histograms, sizes, strict=True)):
            raise ValueError("reference: every histogram needs len(edges) + 1 proportions")
        # All columns' bins side by side in one flat vector: one bincount and one PSI pass per batch.
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        self._bins_of_column = np.repeat(sizes, sizes)
        expected = np.concatenate([[], *(np.asarray(h["proportions"], dtype=float) for h in histograms)])
        self._expected = self._smooth(expected)
        self._counts = np.zeros(int(sizes.sum()), dtype=np.int64)
        self._ring = np.zeros((window, len(histograms)), dtype=np.int32)  # flat bin index per row
        self._pos = 0  # next slot of the ring to write (the oldest row once it is full)
        self.filled = 0
        self._window = window

    def _smooth(self, proportions: np.ndarray) -> np.ndarray:
        return (proportions + EPSILON) / (1.0 + EPSILON * self._bins_of_column)

    def add(self, columns: Sequence[np.ndarray]) -> None:
        """Add rows given column by column (in the order of the histograms)."""
        if not columns or len(columns[0]) == 0:
            return
        columns = [c[-self._window:] for c in columns]  # older rows of a huge batch would leave at once
        n = len(columns[0])
        new = np.empty((n, len(columns)), dtype=np.int32)
        for j, (column, edges) in enumerate(zip(columns, self._edges, strict=True)):
            new[:, j] = np.searchsorted(edges, column, side="left")
        new += self._offsets
        slots = (self._pos + np.arange(n)) % self._window
        leaving = self._ring[slots[slots < self.filled]]  # the ring fills from slot 0 up
        n_bins = len(self._counts)
        self._counts -= np.bincount(leaving.ravel(), minlength=n_bins)
        self._counts += np.bincount(new.ravel(), minlength=n_bins)
        self._ring[slots] = new
        self._pos = (self._pos + n) % self._window
        self.filled = min(self._window, self.filled + n)

    def psi(self) -> np.ndarray:
        observed = self._smooth(self._counts / max(1, self.filled))
        terms = (observed - self._expected) * np.log(observed / self._expected)
        return np.add.reduceat(terms, self._offsets) if len(terms) else np.zeros(0)


class DriftMonitor:
    """PSI of the last ``window`` rows against a reference, per feature and for the score.

    Two windows, as the reference's filter says: one of every row for the transaction-only features,
    one of warm rows only for the history features and the score (empty on a cold worker until its
    cards have ``min_history_days`` of history). A window judges nothing before ``min_count`` rows.
    A name is *detected* when its PSI reaches ``psi_threshold`` and *resolved* when it falls below
    ``resolve_threshold`` (default half the threshold): the gap keeps a PSI hovering near the
    threshold from flapping. Raises ``ValueError`` on a reference without the warm filter (it would
    report the cold start itself as drift).
    """

    def __init__(self, reference: Mapping[str, Any], window: int = 5000, psi_threshold: float = 0.2,
                 min_count: int = 1000, resolve_threshold: float | None = None,
                 ignore: Collection[str] = CALENDAR_FEATURES, names: Sequence[str] = MODEL_FEATURES) -> None:
        resolve = psi_threshold / 2 if resolve_threshold is None else resolve_threshold
        if window < 1 or not 1 <= min_count <= window:
            raise ValueError("need window >= 1 and 1 <= min_count <= window")
        if not 0 <= resolve < psi_threshold:
            raise ValueError("need 0 <= resolve_threshold < psi_threshold")
        features = reference["features"]
        row_filter = reference.get("filter") or {}
        if row_filter.get("name") != WARM_FILTER:
            raise ValueError(f"reference has no {WARM_FILTER!r} row filter: its history features were taken on "
                             "full card histories and a cold worker would report its own start as drift; rebuild "
                             "it with `python -m stream_app.offline.training --rebuild-drift-reference MODEL.onnx`")
        self.min_history_days = float(row_filter["min_history_days"])
        warm_only = set(row_filter["applies_to"])
        # History features are absent when training saw no warm card (history too short): not monitored.
        self.names = tuple(names)
        missing = [name for name in names if name not in features and (name not in warm_only
                                                                               or row_filter["rows"])]
        if missing:
            raise ValueError(f"reference lacks features {missing}: built for other features?")
        # Entity features are not monitored: a replica's profiles are as young as the replica (a merchant's age,
        # its label-derived shares), so a new worker would report its own start as drift. Issue 13's record.
        monitored = [(i, name) for i, name in enumerate(names)
                     if name not in ignore and name in features and name in CARD_FEATURE_NAMES]
        self._all_columns = [i for i, name in monitored if name not in warm_only]
        self._warm_columns = [i for i, name in monitored if name in warm_only]
        self._has_score = SCORE in reference
        if self._has_score and SCORE not in warm_only:
            raise ValueError("reference: the score must be taken on warm rows")
        names_all = [self.names[i] for i in self._all_columns]
        names_warm = [self.names[i] for i in self._warm_columns] + ([SCORE] if self._has_score else [])
        self._names = names_all + names_warm
        self._all = _Window([features[n] for n in names_all], window)
        self._warm = _Window([features[n] for n in names_warm[:len(self._warm_columns)]]
                             + ([reference[SCORE]] if self._has_score else []), window)
        self._min_count = min_count
        self._threshold = psi_threshold
        self._resolve = resolve
        self._detected = np.zeros(len(self._names), dtype=bool)

    def is_warm(self, state: CardState, ts_ms: int) -> bool:
        """``is_warm`` with this reference's history length: the flag ``update_many`` wants per row."""
        return is_warm(state, ts_ms, self.min_history_days)

    def _psi_values(self) -> np.ndarray:
        """PSI per name; NaN for a window that has fewer than ``min_count`` rows."""
        parts = []
        for window, width in ((self._all, len(self._all_columns)),
                              (self._warm, len(self._names) - len(self._all_columns))):
            parts.append(window.psi() if window.filled >= self._min_count else np.full(width, np.nan))
        return np.concatenate(parts)

    def update_many(self, rows: Sequence[Sequence[float]], scores: Sequence[float],
                    warm: Sequence[bool]) -> list[DriftEvent]:
        """Add a micro-batch (feature rows in MODEL_FEATURES order, the model's score of each, and whether
        each row's card is warm, see ``is_warm``) to the windows; return the names whose drift state
        changed with it."""
        if len(rows) == 0:
            return []
        x = np.asarray(rows, dtype=np.float32)
        s = np.asarray(scores, dtype=np.float32)
        w = np.asarray(warm, dtype=bool)
        if x.ndim != 2 or x.shape[1] != len(self.names) or s.shape != (len(x),) or w.shape != (len(x),):
            raise ValueError(f"need [n, {len(self.names)}] rows, n scores and n warm flags, "
                             f"got {x.shape}, {s.shape} and {w.shape}")
        self._all.add([x[:, i] for i in self._all_columns])
        self._warm.add([x[w, i] for i in self._warm_columns] + ([s[w]] if self._has_score else []))
        psi = self._psi_values()
        judged = ~np.isnan(psi)
        detected = judged & ~self._detected & (psi >= self._threshold)
        resolved = judged & self._detected & (psi < self._resolve)
        self._detected ^= detected | resolved
        return [DriftEvent(self._names[j], float(psi[j]), bool(detected[j]))
                for j in np.flatnonzero(detected | resolved)]

    def psi(self) -> dict[str, float]:
        """Current PSI per monitored name whose window holds ``min_count`` rows (the history features
        and the score are absent until enough rows of warm cards have been seen)."""
        return {name: value for name, value in zip(self._names, self._psi_values().tolist(), strict=True)
                if not np.isnan(value)}
