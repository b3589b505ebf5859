"""The offline model: gradient-boosted trees exported to ONNX, served by onnxruntime.

A model file is only served with its model card beside it (``<file>.card.json``): the card's
feature order must equal the code's, and the file's sha256 must equal the card's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from stream_app.domain.decision import ReasonModel
from stream_app.domain.entities import DEFAULT_FEATURE_SET, FeatureSet
from stream_app.startup import StartupError

PACKAGED_MODEL = "fraud_gbt.onnx"


class ModelRejected(ValueError):
    """A model file that must not serve: missing, unreadable, not ONNX, wrong checksum, feature order or shape."""


def packaged_model_path() -> Path:
    return Path(__file__).resolve().parent.parent / "model_files" / PACKAGED_MODEL


def card_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".card.json")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class OnnxScorer:
    session: ort.InferenceSession
    card: dict[str, Any]
    input_name: str
    output_name: str
    features: FeatureSet = DEFAULT_FEATURE_SET  # the vector it takes (checked against its card at load)

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @cached_property
    def reasons(self) -> ReasonModel:
        """The reasons of this model's scores, from its card: built once per model (each score record and alert
        asks for it)."""
        return ReasonModel.from_card(self.card)

    @classmethod
    def load(cls, path: Path | str | None = None, features: FeatureSet = DEFAULT_FEATURE_SET) -> OnnxScorer:
        """The model at ``path`` (None: the packaged one) for the vector ``features`` (the worker's declared
        entities); every reason it cannot serve is ``ModelRejected``."""
        model_path = Path(path) if path else packaged_model_path()
        try:
            digest = sha256_file(model_path)
            card = json.loads(card_path(model_path).read_text())
        except FileNotFoundError as exc:
            missing = "no such file" if exc.filename == str(model_path) else "no model card beside it"
            raise ModelRejected(f"{model_path}: {missing}") from None
        except (OSError, ValueError) as exc:  # unreadable file or directory, card not JSON
            raise ModelRejected(f"{model_path}: cannot read it or its card: {exc}") from None
        if card.get("sha256") != digest:
            raise ModelRejected(f"{model_path}: sha256 {digest[:12]} does not match its card")
        if tuple(card.get("feature_names", ())) != features.names:
            trained_on = card.get("feature_set", "card/v1 (no feature_set in its card)")
            if trained_on == features.name:
                raise ModelRejected(f"{model_path}: its card names feature set {features.name} but lists other "
                                    f"features or another order than this code's: retrain it with `stream-app train`")
            raise ModelRejected(f"{model_path}: trained on feature set {trained_on}, this worker computes "
                                f"{features.name} ({len(features.names)} features, STREAM_APP_ENTITIES): retrain it "
                                f"with `stream-app train` under the same STREAM_APP_ENTITIES")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one worker = one core; parallelism comes from partitions
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors share no public base class
            first_line = (str(exc).splitlines() or [""])[0][:300]
            raise ModelRejected(f"{model_path}: cannot be loaded: {type(exc).__name__}: {first_line}") from exc
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] not in (len(features.names), None, "N"):
            raise ModelRejected(f"{model_path}: expected one input of width {len(features.names)}")
        outputs = [o.name for o in session.get_outputs()]
        output = "probabilities" if "probabilities" in outputs else outputs[-1]
        return cls(session, card, inputs[0].name, output, features)

    def predict_proba_many(self, rows: Sequence[Sequence[float]] | np.ndarray) -> list[float]:
        if len(rows) == 0:
            return []
        x = np.asarray(rows, dtype=np.float32)
        probabilities = self.session.run([self.output_name], {self.input_name: x})[0]
        return [float(p) for p in np.asarray(probabilities)[:, 1]]

    def predict_proba_one(self, features: Sequence[float]) -> float:
        return self.predict_proba_many([features])[0]


def load_configured(path: str, setting: str, features: FeatureSet = DEFAULT_FEATURE_SET) -> OnnxScorer:
    """The model a setting names (empty: the packaged one), or a :class:`StartupError` naming the setting."""
    try:
        return OnnxScorer.load(path or None, features)
    except ModelRejected as exc:
        raise StartupError(f"{setting}: {exc}; point {setting} at a readable .onnx file with its .card.json "
                           "beside it (empty: the packaged model)") from None
