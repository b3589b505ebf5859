"""Hot model swap: only models that can serve replace the serving one; the watcher waits for whole files."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.entities import FEATURE_SET, MODEL_FEATURES, N_MODEL_FEATURES, EntityTable, featurize_model
from stream_app.domain.features import FEATURE_NAMES
from stream_app.models.onnx_model import ModelRejected, OnnxScorer, card_path, packaged_model_path, sha256_file
from stream_app.models.registry import ModelSlot, ModelWatcher, SwapResult, default_probe, validate_candidate
from stream_app.offline.training import TrainConfig, train_and_export

PACKAGED_CARD: dict[str, Any] = json.loads(card_path(packaged_model_path()).read_text())
PACKAGED_VERSION = PACKAGED_CARD["version"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid model that differs from the packaged one (other seed, other size)."""
    out = tmp_path_factory.mktemp("trained")
    train_and_export(TrainConfig(seed=3, n_customers=300, days=20, label_delay_days=3, test_days=5,
                                 n_estimators=20, output_dir=str(out)))
    return out / "fraud_gbt.onnx"


@pytest.fixture(scope="module")
def rows() -> list[list[float]]:
    states: dict[str, Any] = {}
    items = list(simulate(GeneratorConfig(seed=11, n_customers=50, fraud_rate=0.05), days=3))
    table = EntityTable()
    return [featurize_model(states, table, i.tx, 7 * 86_400_000) for i in items[:300]]


def write_card(model: Path, **changes: Any) -> Path:
    """The packaged card, changed, with the sha256 of ``model``: passes the checksum check."""
    card = {**PACKAGED_CARD, "version": f"test-{model.stem}", "sha256": sha256_file(model), **changes}
    card_path(model).write_text(json.dumps(card))
    return model


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    shutil.copyfile(card_path(src), card_path(dst))
    return dst


def tiny_onnx(path: Path, kind: str, width: int = N_MODEL_FEATURES, dtype: int = TensorProto.FLOAT,
              out_width: int = 2) -> Path:
    """A one- or two-node ONNX graph standing in for a model that is wrong in one way."""
    small = np.random.default_rng(0).normal(0, 1e-6, (width, out_width))
    matmul = helper.make_node("MatMul", ["features", "W"], ["z"])
    softmax = helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)
    weights, nodes = {
        "softmax": (small, [matmul, softmax]),
        "constant": (np.zeros_like(small), [matmul, softmax]),
        "linear": (np.ones_like(small), [helper.make_node("MatMul", ["features", "W"], ["probabilities"])]),
        "nan": (np.zeros_like(small), [matmul, helper.make_node("Div", ["z", "z"], ["probabilities"])]),
        "gather": (np.array([0, width + 6]), [helper.make_node("Gather", ["features", "W"], ["z"], axis=1), softmax]),
    }[kind]
    if weights.dtype.kind == "f":
        weights = weights.astype(np.float32 if dtype == TensorProto.FLOAT else np.float64)
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("features", dtype, [None, width])],
        [helper.make_tensor_value_info("probabilities", dtype, [None, out_width])],
        [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return write_card(path)


def corrupted(tmp: Path) -> Path:
    data = bytearray(packaged_model_path().read_bytes())
    for i in range(100, 164):
        data[i] ^= 0xFF
    (tmp / "corrupt.onnx").write_bytes(bytes(data))
    return write_card(tmp / "corrupt.onnx")


def before_entities(tmp: Path) -> Path:
    """A model of the card's features alone, with a card from before feature sets (no feature_set)."""
    model = tiny_onnx(tmp / "v1.onnx", "softmax", width=len(FEATURE_NAMES))
    card = {k: v for k, v in json.loads(card_path(model).read_text()).items() if k != "feature_set"}
    card_path(model).write_text(json.dumps({**card, "feature_names": list(FEATURE_NAMES)}))
    return model


def without_card(tmp: Path) -> Path:
    shutil.copyfile(packaged_model_path(), tmp / "nocard.onnx")
    return tmp / "nocard.onnx"


BAD_MODELS = {
    "corrupted bytes": (corrupted, r"cannot be loaded: InvalidProtobuf"),
    "input width 5": (lambda t: tiny_onnx(t / "w5.onnx", "softmax", width=5), rf"input of width {N_MODEL_FEATURES}"),
    "double input": (lambda t: tiny_onnx(t / "f64.onnx", "softmax", dtype=TensorProto.DOUBLE),
                     r"tensor\(double\).*expected one tensor\(float\) input"),
    "one output column": (lambda t: tiny_onnx(t / "o1.onnx", "softmax", out_width=1),
                          r"expected tensor\(float\) of shape \[batch, 2\]"),
    "fails at run time": (lambda t: tiny_onnx(t / "gather.onnx", "gather"),
                          r"scoring the probe batch failed: InvalidArgument"),
    "constant output": (lambda t: tiny_onnx(t / "const.onnx", "constant"),
                        r"constant model: the same probability 0\.5"),
    "not probabilities": (lambda t: tiny_onnx(t / "lin.onnx", "linear"), r"probabilities outside \[0, 1\]"),
    "NaN output": (lambda t: tiny_onnx(t / "nan.onnx", "nan"), r"non-finite probabilities"),
    "missing card": (without_card, r"no model card beside"),
    "card features only": (before_entities, re.escape(
        f"v1.onnx: trained on feature set card/v1 (no feature_set in its card), this worker computes {FEATURE_SET} "
        f"({N_MODEL_FEATURES} features, STREAM_APP_ENTITIES): retrain it with `stream-app train` under the same "
        "STREAM_APP_ENTITIES")),
}


def test_default_probe_spans_legit_to_fraud_means() -> None:
    probe = default_probe(PACKAGED_CARD)
    assert probe is not None and len(probe) == 64 and probe == default_probe(PACKAGED_CARD)
    stats = PACKAGED_CARD["feature_stats"]
    assert probe[0] == pytest.approx([stats[n]["legit_mean"] for n in MODEL_FEATURES])
    assert probe[56] == pytest.approx([stats[n]["fraud_mean"] for n in MODEL_FEATURES])
    assert default_probe({k: v for k, v in PACKAGED_CARD.items() if k != "feature_stats"}) is None


def test_tiny_softmax_model_is_accepted(tmp_path: Path) -> None:
    """The graphs below are refused for the one thing each gets wrong, not for being tiny."""
    assert validate_candidate(tiny_onnx(tmp_path / "ok.onnx", "softmax")).version == "test-ok"


def test_valid_different_model_swaps_in(trained: Path, rows: list[list[float]]) -> None:
    slot = ModelSlot(OnnxScorer.load())
    before = slot.current.predict_proba_many(rows)
    card = json.loads(card_path(trained).read_text())
    new_version = card["version"]
    assert new_version != PACKAGED_VERSION and card["feature_set"] == FEATURE_SET

    result = slot.try_swap(trained)

    assert result == SwapResult(ok=True, version=new_version, previous=PACKAGED_VERSION, error=None)
    assert slot.current.version == new_version
    assert slot.current.predict_proba_many(rows) != before
    assert [e.result for e in slot.history] == [result] and slot.history[0].path == str(trained)


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_is_refused_and_old_model_keeps_serving(case: str, tmp_path: Path,
                                                          rows: list[list[float]]) -> None:
    make, problem = BAD_MODELS[case]
    path = make(tmp_path)
    slot = ModelSlot(OnnxScorer.load())
    serving = slot.current
    before = serving.predict_proba_many(rows)

    result = slot.try_swap(path)

    assert not result.ok and result.error is not None
    assert path.name in result.error
    assert result.version == result.previous == PACKAGED_VERSION
    assert slot.current is serving and slot.current.predict_proba_many(rows) == before
    assert slot.history[-1].result == result
    with pytest.raises(ModelRejected, match=problem):
        validate_candidate(path)


def test_probe_falls_back_to_the_serving_models_stats(trained: Path, tmp_path: Path) -> None:
    model = copy_model(trained, tmp_path / "nostats.onnx")
    card = json.loads(card_path(model).read_text())
    del card["feature_stats"]
    card_path(model).write_text(json.dumps(card))

    with pytest.raises(ModelRejected, match="nostats.onnx: no feature_stats"):
        validate_candidate(model)
    assert validate_candidate(model, fallback_card=PACKAGED_CARD).version == card["version"]
    assert ModelSlot(OnnxScorer.load()).try_swap(model).ok


def test_given_probe_is_used(trained: Path) -> None:
    row = default_probe(PACKAGED_CARD)[0]  # type: ignore[index]
    with pytest.raises(ModelRejected, match="constant model"):
        validate_candidate(trained, probe=[row, row, row])
    with pytest.raises(ValueError, match="at least two rows"):
        validate_candidate(trained, probe=[row])


def test_nothing_to_try_is_not_an_attempt() -> None:
    slot = ModelSlot(OnnxScorer.load())
    assert slot.try_swap(None) is None
    assert slot.history == ()


def test_history_is_bounded(tmp_path: Path) -> None:
    slot = ModelSlot(OnnxScorer.load(), history_size=2)
    paths = [without_card(tmp_path), tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for p in paths:
        slot.try_swap(p)
    assert [e.path for e in slot.history] == [str(p) for p in paths[1:]]


def later(path: Path, seconds: int) -> None:
    """Make ``path`` unambiguously newer than the files written before it."""
    t = path.stat().st_mtime_ns + seconds * 1_000_000_000
    os.utime(path, ns=(t, t))


def test_watcher_waits_for_whole_files_and_reports_each_model_once(trained: Path, tmp_path: Path) -> None:
    model = copy_model(packaged_model_path(), tmp_path / "fraud_gbt.onnx")
    watcher = ModelWatcher(tmp_path)
    assert watcher.poll() is None  # what the worker started with

    card_path(model).unlink()  # a deployment copying the new model in: model first
    shutil.copyfile(trained, model)
    assert watcher.poll() is None and "waiting" in (watcher.waiting or "")
    shutil.copyfile(card_path(packaged_model_path()), card_path(model))  # a stale card
    assert watcher.poll() is None and "sha256" in (watcher.waiting or "")
    shutil.copyfile(card_path(trained), card_path(model))

    assert watcher.poll() == model
    assert watcher.waiting is None
    assert watcher.poll() is None

    newer = tiny_onnx(tmp_path / "tiny.onnx", "softmax")
    later(newer, 10)
    later(card_path(newer), 10)
    assert watcher.poll() == newer
    assert watcher.poll() is None


def test_watcher_timer_refuses_a_broken_model_once(tmp_path: Path) -> None:
    slot = ModelSlot(OnnxScorer.load())
    watcher = ModelWatcher(tmp_path)
    tiny_onnx(tmp_path / "const.onnx", "constant")
    for _ in range(3):
        slot.try_swap(watcher.poll())
    assert len(slot.history) == 1 and "constant model" in (slot.history[0].result.error or "")
    assert slot.current.version == PACKAGED_VERSION


def test_watcher_on_a_file(trained: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    watcher = ModelWatcher(model)
    assert watcher.poll() is None
    copy_model(trained, model)
    assert watcher.poll() == model
    assert ModelSlot(OnnxScorer.load()).try_swap(model).ok


def test_watcher_can_report_what_is_there_at_start(tmp_path: Path) -> None:
    model = copy_model(packaged_model_path(), tmp_path / "fraud_gbt.onnx")
    assert ModelWatcher(tmp_path, report_existing=True).poll() == model
    assert ModelWatcher(tmp_path).poll() is None


def test_watcher_sees_a_rewrite_that_keeps_size_and_timestamp(trained: Path, tmp_path: Path) -> None:
    """File timestamps are coarse: a recent file is re-read even when its stat looks unchanged."""
    model = tmp_path / "fraud_gbt.onnx"
    watcher = ModelWatcher(tmp_path)
    shutil.copyfile(trained, model)
    good = card_path(trained).read_text()
    digest = sha256_file(trained)
    card_path(model).write_text(good.replace(digest, digest[::-1]))  # same size, wrong sha256
    stamp = card_path(model).stat().st_mtime_ns
    assert watcher.poll() is None

    card_path(model).write_text(good)
    os.utime(card_path(model), ns=(stamp, stamp))
    assert watcher.poll() == model
