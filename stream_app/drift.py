"""Drift of the live features and scores against the distribution the offline model was trained on.

Training stores a binned picture of its rows in the model card (``reference_from_rows``); a worker
feeds every scored micro-batch to a ``DriftMonitor``, which keeps per-bin counts over a sliding window
of recent rows and computes the Population Stability Index (PSI) of each feature and of the score.
It reports transitions only (drift detected / resolved, with hysteresis), so a lasting drift is one
event, not one per batch. Pure numpy: metrics and logs are wired by the caller.

Values are binned as float32, the precision the model sees and the training set is stored in, so a
value equal to a bin edge lands in the same bin at training and at serving time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from stream_app.features import FEATURE_NAMES, N_FEATURES

SCORE: Final = "score"
#: Not monitored by default: a window of recent rows covers a slice of the clock (minutes to days),
#: never the whole day and week the training data spans, so their PSI would be high without drift.
CALENDAR_FEATURES: Final = ("hour_of_day", "weekday")
#: Added to every bin's proportion: an empty bin would make PSI infinite.
EPSILON: Final = 1e-4


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


def reference_from_rows(x: np.ndarray, scores: np.ndarray | None = None, bins: int = 10) -> dict[str, Any]:
    """JSON-serialisable binned distribution of training rows (and of the model's scores on them),
    for the model card's ``"drift_reference"``."""
    values = np.asarray(x, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != N_FEATURES or len(values) == 0:
        raise ValueError(f"x must be a non-empty [n, {N_FEATURES}] array, got shape {values.shape}")
    if bins < 2:
        raise ValueError("bins must be >= 2")
    if not np.isfinite(values).all():
        raise ValueError("x has non-finite values")
    reference: dict[str, Any] = {
        "rows": len(values),
        "features": {name: _histogram(values[:, i], bins) for i, name in enumerate(FEATURE_NAMES)},
    }
    if scores is not None:
        s = np.asarray(scores, dtype=np.float32)
        if s.shape != (len(values),) or not np.isfinite(s).all():
            raise ValueError("scores must be finite, one per row of x")
        reference[SCORE] = _histogram(s, bins)
    return reference


class DriftMonitor:
    """PSI of the last ``window`` rows against a reference, per feature and for the score.

    Memory is bounded by the window: a ring of each row's bin indices and the per-bin counts it sums
    to; a batch adds its rows' counts and subtracts those of the rows it pushes out, so an update costs
    O(columns) per row whatever the window. Nothing is judged before ``min_count`` rows are in it.
    A name is *detected* when its PSI reaches ``psi_threshold`` and *resolved* when it falls below
    ``resolve_threshold`` (default half the threshold): the gap keeps a PSI hovering near the
    threshold from flapping.
    """

    def __init__(self, reference: Mapping[str, Any], window: int = 5000, psi_threshold: float = 0.2,
                 min_count: int = 1000, resolve_threshold: float | None = None,
                 ignore: Collection[str] = CALENDAR_FEATURES) -> None:
        resolve = psi_threshold / 2 if resolve_threshold is None else resolve_threshold
        if window < 1 or not 1 <= min_count <= window:
            raise ValueError("need window >= 1 and 1 <= min_count <= window")
        if not 0 <= resolve < psi_threshold:
            raise ValueError("need 0 <= resolve_threshold < psi_threshold")
        features = reference["features"]
        missing = [name for name in FEATURE_NAMES if name not in features]
        if missing:
            raise ValueError(f"reference lacks features {missing}: built for other features?")
        self._columns = [i for i, name in enumerate(FEATURE_NAMES) if name not in ignore]
        self._names = [FEATURE_NAMES[i] for i in self._columns]
        histograms = [features[name] for name in self._names]
        self._has_score = SCORE in reference
        if self._has_score:
            self._names.append(SCORE)
            histograms.append(reference[SCORE])
        self._edges = [np.asarray(h["edges"], dtype=np.float32) for h in histograms]
        sizes = np.array([len(e) + 1 for e in self._edges])
        if any(len(h["proportions"]) != size for h, size in zip(histograms, sizes, strict=True)):
            raise ValueError("reference: every histogram needs len(edges) + 1 proportions")
        # All columns' bins side by side in one flat vector: one bincount and one PSI pass per batch.
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        self._bins_of_column = np.repeat(sizes, sizes)
        expected = np.concatenate([np.asarray(h["proportions"], dtype=float) for h in histograms])
        self._expected = self._smooth(expected)
        self._counts = np.zeros(int(sizes.sum()), dtype=np.int64)
        self._ring = np.zeros((window, len(self._names)), dtype=np.int32)  # flat bin index per row
        self._pos = 0  # next slot of the ring to write (the oldest row once it is full)
        self._filled = 0
        self._window = window
        self._min_count = min_count
        self._threshold = psi_threshold
        self._resolve = resolve
        self._detected = np.zeros(len(self._names), dtype=bool)

    def _smooth(self, proportions: np.ndarray) -> np.ndarray:
        return (proportions + EPSILON) / (1.0 + EPSILON * self._bins_of_column)

    def _psi_values(self) -> np.ndarray:
        observed = self._smooth(self._counts / self._filled)
        terms = (observed - self._expected) * np.log(observed / self._expected)
        return np.add.reduceat(terms, self._offsets)

    def update_many(self, rows: Sequence[Sequence[float]], scores: Sequence[float]) -> list[DriftEvent]:
        """Add a micro-batch (feature rows in FEATURE_NAMES order, the model's score of each) to the
        window; return the names whose drift state changed with it."""
        if len(rows) == 0:
            return []
        x = np.asarray(rows, dtype=np.float32)
        s = np.asarray(scores, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != N_FEATURES or s.shape != (len(x),):
            raise ValueError(f"need [n, {N_FEATURES}] rows and n scores, got {x.shape} and {s.shape}")
        x, s = x[-self._window:], s[-self._window:]  # older rows of a huge batch would leave at once
        values = [x[:, i] for i in self._columns] + ([s] if self._has_score else [])
        new = np.empty((len(x), len(values)), dtype=np.int32)
        for j, (column, edges) in enumerate(zip(values, self._edges, strict=True)):
            new[:, j] = np.searchsorted(edges, column, side="left")
        new += self._offsets

        slots = (self._pos + np.arange(len(x))) % self._window
        leaving = self._ring[slots[slots < self._filled]]  # the ring fills from slot 0 up
        n_bins = len(self._counts)
        self._counts -= np.bincount(leaving.ravel(), minlength=n_bins)
        self._counts += np.bincount(new.ravel(), minlength=n_bins)
        self._ring[slots] = new
        self._pos = (self._pos + len(x)) % self._window
        self._filled = min(self._window, self._filled + len(x))

        if self._filled < self._min_count:
            return []
        psi = self._psi_values()
        detected = ~self._detected & (psi >= self._threshold)
        resolved = self._detected & (psi < self._resolve)
        self._detected ^= detected | resolved
        return [DriftEvent(self._names[j], float(psi[j]), bool(detected[j]))
                for j in np.flatnonzero(detected | resolved)]

    def psi(self) -> dict[str, float]:
        """Current PSI per monitored name; empty until the window holds ``min_count`` rows."""
        if self._filled < self._min_count:
            return {}
        return dict(zip(self._names, self._psi_values().tolist(), strict=True))
