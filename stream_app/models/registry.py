"""ONNX models that change while the stream runs: validate, swap, watch.

A worker must take a retrained model without a restart (a restart means a rebalance and a replay),
and must never swap a broken model in: :func:`validate_candidate` checks more than
:meth:`OnnxScorer.load` (input and output signature, and a probe batch that must score to finite,
non-constant probabilities). :class:`ModelSlot` holds the serving model; a swap is one attribute
assignment, so a reader sees either the old or the new model, never a mix. Readers should take
``slot.current`` once per batch, so that the scores and the version recorded with them match.
:class:`ModelWatcher` tells a timer when a complete new model file is there to try::

    @app.timer(5.0)
    async def reload() -> None:
        path = watcher.poll()
        if path is not None:  # loading takes tens of ms: keep it off the event loop
            await asyncio.get_running_loop().run_in_executor(None, slot.try_swap, path)

Challenger: the app holds a second :class:`ModelSlot` for a challenger model (its own watcher and
swaps). :class:`stream_app.domain.scoring.FraudScorer` scores each batch with it too and records that
score beside the others, but the challenger never takes part in the decision: it is there to be
compared with the champion on the same traffic before it is promoted.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, overload

import numpy as np

from stream_app.domain.entities import DEFAULT_FEATURE_SET, FeatureSet
from stream_app.models.onnx_model import ModelRejected, OnnxScorer, card_path, sha256_file

CONSTANT_TOLERANCE: Final = 1e-6  # probe scores closer than this are "all identical"
SETTLE_NS: Final = 2_000_000_000  # files changed this recently are re-read: timestamps are coarse
_PROBE_CENTRES: Final = np.linspace(0.0, 1.0, 8)  # from the legit means (0) to the fraud means (1)
_PROBE_OFFSETS: Final = np.array([0.0, -0.5, 0.5, -1.0, 1.0, -2.0, 2.0, 3.0])  # in legit stds


def default_probe(card: Mapping[str, Any]) -> list[list[float]] | None:
    """64 deterministic rows from the card's ``feature_stats``: the legit and fraud means, the line
    between them and ± a few legit stds around it. None when the card has no usable stats."""
    stats: Any = card.get("feature_stats")
    try:
        names = [str(name) for name in card["feature_names"]]
        legit, std, fraud = (np.array([float(stats[name][key]) for name in names])
                             for key in ("legit_mean", "legit_std", "fraud_mean"))
    except (KeyError, TypeError, ValueError):
        return None
    centres = legit + _PROBE_CENTRES[:, None] * (fraud - legit)
    rows = (centres[:, None, :] + _PROBE_OFFSETS[None, :, None] * std).reshape(-1, len(names))
    return rows.tolist() if np.isfinite(rows).all() else None


def validate_candidate(path: Path, probe: Sequence[Sequence[float]] | None = None, *,
                       fallback_card: Mapping[str, Any] | None = None,
                       features: FeatureSet = DEFAULT_FEATURE_SET) -> OnnxScorer:
    """Load ``path`` and prove it can serve, or raise :class:`ModelRejected` saying why.

    The probe defaults to :func:`default_probe` of the candidate's card, else of ``fallback_card``
    (the serving model's card, whose stats describe the same features).
    """
    name = path.name
    try:
        scorer = OnnxScorer.load(path, features)
    except ModelRejected:
        raise
    except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no narrower base
        raise ModelRejected(f"{name}: cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not isinstance(scorer.card.get("version"), str):
        raise ModelRejected(f"{name}: the card has no version")

    inputs = scorer.session.get_inputs()
    if (len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 2
            or inputs[0].shape[1] != len(features.names)):
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs) or "none"
        raise ModelRejected(f"{name}: inputs are [{found}]; expected one tensor(float) input of shape "
                            f"[batch, {len(features.names)}]")
    output = next(o for o in scorer.session.get_outputs() if o.name == scorer.output_name)
    if output.type != "tensor(float)" or len(output.shape) != 2 or output.shape[1] != 2:
        raise ModelRejected(f"{name}: output {output.name} is {output.type} {output.shape}; expected "
                            "tensor(float) of shape [batch, 2] (P(legit), P(fraud))")

    rows = probe if probe is not None else default_probe(scorer.card)
    if rows is None and fallback_card is not None:
        rows = default_probe(fallback_card)
    if rows is None:
        raise ModelRejected(f"{name}: no feature_stats in its card (nor a fallback) to build a probe batch")
    if len(rows) < 2:
        raise ValueError("a probe batch needs at least two rows to tell a constant model")
    try:
        scores = np.asarray(scorer.predict_proba_many(rows), dtype=np.float64)
    except Exception as exc:  # whatever the runtime raises, this model cannot serve
        raise ModelRejected(f"{name}: scoring the probe batch failed: {type(exc).__name__}: {exc}") from exc
    if scores.shape != (len(rows),):
        raise ModelRejected(f"{name}: {scores.shape[0]} scores for a probe batch of {len(rows)} rows")
    if not np.isfinite(scores).all():
        raise ModelRejected(f"{name}: non-finite probabilities on the probe batch")
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise ModelRejected(f"{name}: probabilities outside [0, 1] on the probe batch "
                            f"(min {scores.min():.6g}, max {scores.max():.6g})")
    if np.ptp(scores) <= CONSTANT_TOLERANCE:
        raise ModelRejected(f"{name}: constant model: the same probability {scores[0]:.6g} for all "
                            f"{len(rows)} probe rows")
    return scorer


@dataclass(frozen=True, slots=True)
class SwapResult:
    ok: bool
    version: str  # the version serving after the attempt
    previous: str  # the version serving before it
    error: str | None


@dataclass(frozen=True, slots=True)
class SwapEvent:
    """One attempt, kept for the info endpoint."""

    at_ms: int
    path: str
    result: SwapResult


class ModelSlot:
    """The serving ONNX model, replaceable while the stream runs; a bad candidate never replaces it."""

    def __init__(self, scorer: OnnxScorer, history_size: int = 20) -> None:
        self.current = scorer
        self._history: deque[SwapEvent] = deque(maxlen=history_size)
        self._lock = threading.Lock()  # try_swap may run in an executor thread: one swap at a time

    @property
    def history(self) -> tuple[SwapEvent, ...]:
        """The latest attempts, oldest first."""
        return tuple(self._history)

    @overload
    def try_swap(self, path: None) -> None: ...

    @overload
    def try_swap(self, path: Path | str) -> SwapResult: ...

    def try_swap(self, path: Path | str | None) -> SwapResult | None:
        """Validate ``path`` and serve it if it passes; None in, None out (``watcher.poll()`` had nothing)."""
        if path is None:
            return None
        with self._lock:
            previous = self.current
            try:
                candidate = validate_candidate(Path(path), fallback_card=previous.card, features=previous.features)
            except ModelRejected as exc:
                result = SwapResult(False, previous.version, previous.version, str(exc))
            else:
                self.current = candidate
                result = SwapResult(True, candidate.version, previous.version, None)
            self._history.append(SwapEvent(time.time_ns() // 1_000_000, str(path), result))
        return result


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class ModelWatcher:
    """Polls a model file, or a directory (its newest ``*.onnx``), for a complete new model.

    Complete means the ``.onnx`` and its card both exist and the card's sha256 is the file's: until
    then the files are taken as half-written and :meth:`poll` waits (``waiting`` says why). Each
    content (model and card) is returned once, so a broken model is refused once, not every poll.
    What is there when the watcher starts counts as seen (the worker started with it), unless
    ``report_existing``.
    """

    def __init__(self, path: Path | str, report_existing: bool = False) -> None:
        self.path = Path(path)
        self.waiting: str | None = None
        self._state: tuple[Path, tuple[int, int] | None, tuple[int, int] | None] | None = None
        self._settled = False  # the files at the last look were older than SETTLE_NS
        self._reported: str | None = None  # sha256 of model + card last returned
        if not report_existing:
            self.poll()

    def _newest_model(self) -> Path | None:
        if not self.path.is_dir():
            return self.path
        models = [(stat[0], p) for p in self.path.glob("*.onnx") if (stat := _stat(p)) is not None]
        return max(models)[1] if models else None

    def poll(self) -> Path | None:
        """The model to try, if a complete one has appeared since the last look; else None."""
        model = self._newest_model()
        if model is None:
            return None
        state = (model, _stat(model), _stat(card_path(model)))
        if state == self._state and self._settled:
            return None
        now = time.time_ns()
        self._state = state
        self._settled = all(s is None or now - s[0] > SETTLE_NS for s in state[1:])
        try:
            card_bytes = card_path(model).read_bytes()
            digest = sha256_file(model)
        except OSError as exc:
            self.waiting = f"{model.name}: waiting for the model and its card ({exc})"
            return None
        try:
            card = json.loads(card_bytes)
        except ValueError:
            card = None
        if not isinstance(card, dict) or card.get("sha256") != digest:
            self.waiting = f"{model.name}: waiting for a card whose sha256 matches the file"
            return None
        self.waiting = None
        content = digest + hashlib.sha256(card_bytes).hexdigest()
        if content == self._reported:
            return None
        self._reported = content
        return model
