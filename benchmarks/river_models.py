"""Which River model serves: prequential quality on generated traffic, and cost per call.

Each candidate sees the same stream through the same `featurize`: it scores every transaction first,
then learns its label after a delay of `--label-delay` transactions (labels come late in production).
Prints average precision and ROC AUC of the scores, and microseconds per predict and per learn.
Run: python benchmarks/river_models.py [--days 20 --customers 1500]
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from river import compose, forest, linear_model, optim, preprocessing, tree

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.features import featurize
from stream_app.models.river_model import RiverScorer, default_pipeline
from stream_app.offline.evaluation import average_precision, roc_auc


def candidates() -> dict[str, compose.Pipeline]:
    return {
        "scaled logreg, Adam 0.001 (served)": default_pipeline(),
        "scaled logreg, SGD 0.005": compose.Pipeline(
            preprocessing.StandardScaler(), linear_model.LogisticRegression(optimizer=optim.SGD(0.005))),
        "scaled logreg, SGD 0.02": compose.Pipeline(
            preprocessing.StandardScaler(), linear_model.LogisticRegression(optimizer=optim.SGD(0.02))),
        "Hoeffding adaptive tree": compose.Pipeline(tree.HoeffdingAdaptiveTreeClassifier(seed=1)),
        "adaptive random forest (5)": compose.Pipeline(forest.ARFClassifier(n_models=5, seed=1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=float, default=20)
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--label-delay", type=int, default=2000)
    args = parser.parse_args()
    states: dict = {}
    stream = [(featurize(states, i.tx, 7 * 86_400_000), i.is_fraud)
              for i in simulate(GeneratorConfig(seed=99, n_customers=args.customers), days=args.days)]
    print(f"{len(stream)} transactions, {sum(y for _, y in stream)} frauds, label delay {args.label_delay}")
    print(f"{'model':40} {'AP':>6} {'AUC':>6} {'predict us':>11} {'learn us':>9}")
    for name, pipeline in candidates().items():
        scorer = RiverScorer(pipeline)
        pending: deque[tuple[list[float], bool]] = deque()
        scores, predict_s, learn_s = [], 0.0, 0.0
        for row, label in stream:
            t0 = time.perf_counter()
            scores.append(scorer.predict_proba_one(row))
            t1 = time.perf_counter()
            pending.append((row, label))
            if len(pending) > args.label_delay:
                scorer.learn_one(*pending.popleft())
            learn_s += time.perf_counter() - t1
            predict_s += t1 - t0
        y = [label for _, label in stream]
        n = len(stream)
        print(f"{name:40} {average_precision(y, scores):6.3f} {roc_auc(y, scores):6.3f} "
              f"{1e6 * predict_s / n:11.1f} {1e6 * learn_s / max(1, scorer.n_learned):9.1f}", flush=True)


if __name__ == "__main__":
    main()
