"""The offline model: gradient-boosted trees exported to ONNX, served by onnxruntime.

A model file is only served with its model card beside it (``<file>.card.json``): the card's
feature order must equal the code's, and the file's sha256 must equal the card's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from stream_app.features import FEATURE_NAMES

PACKAGED_MODEL = "fraud_gbt.onnx"


class ModelRejected(ValueError):
    """A model file that must not serve: wrong checksum, feature order or shape."""


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

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @classmethod
    def load(cls, path: Path | str | None = None) -> OnnxScorer:
        model_path = Path(path) if path else packaged_model_path()
        try:
            card = json.loads(card_path(model_path).read_text())
        except FileNotFoundError:
            raise ModelRejected(f"no model card beside {model_path}") from None
        digest = sha256_file(model_path)
        if card.get("sha256") != digest:
            raise ModelRejected(f"{model_path.name}: sha256 {digest[:12]} does not match its card")
        if tuple(card.get("feature_names", ())) != FEATURE_NAMES:
            raise ModelRejected(f"{model_path.name}: the card's feature order differs from the code's")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one worker = one core; parallelism comes from partitions
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] not in (len(FEATURE_NAMES), None, "N"):
            raise ModelRejected(f"{model_path.name}: expected one input of width {len(FEATURE_NAMES)}")
        outputs = [o.name for o in session.get_outputs()]
        output = "probabilities" if "probabilities" in outputs else outputs[-1]
        return cls(session, card, inputs[0].name, output)

    def predict_proba_many(self, rows: Sequence[Sequence[float]] | np.ndarray) -> list[float]:
        if len(rows) == 0:
            return []
        x = np.asarray(rows, dtype=np.float32)
        probabilities = self.session.run([self.output_name], {self.input_name: x})[0]
        return [float(p) for p in np.asarray(probabilities)[:, 1]]

    def predict_proba_one(self, features: Sequence[float]) -> float:
        return self.predict_proba_many([features])[0]
