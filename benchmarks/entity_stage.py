"""Per-event cost of the entity stage, in process, on generated events: card features, entity features from
the table, the local fold, and a replica folding another worker's score record (orjson parse + fold); and the
table's pickled size (what a checkpoint holds).

Run: python benchmarks/entity_stage.py
"""

import pickle
import time

import orjson

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.entities import MODEL_FEATURES, EntityTable
from stream_app.domain.events import format_ts
from stream_app.domain.features import CardState, featurize
from stream_app.worker.entities import observation_of


def main() -> None:
    items = [x.tx for x in simulate(GeneratorConfig(seed=5, n_customers=3000), days=20)]
    n = len(items)
    table, states = EntityTable(), dict[str, CardState]()
    card = entity = fold = 0.0
    records = []
    for tx in items:
        a = time.perf_counter()
        row = featurize(states, tx, 7 * 86_400_000)
        b = time.perf_counter()
        ent = table.features(tx)
        c = time.perf_counter()
        table.observe(table.observation(tx))
        d = time.perf_counter()
        card, entity, fold = card + b - a, entity + c - b, fold + d - c
        records.append(orjson.dumps({"tx_id": tx.tx_id, "card_id": tx.card_id, "merchant_id": tx.merchant_id,
                                     "event_time": format_ts(tx.ts_ms),
                                     "features": dict(zip(MODEL_FEATURES, row + ent, strict=True))}))
    replica = EntityTable()
    a = time.perf_counter()
    for value in records:
        replica.observe(observation_of(orjson.loads(value), replica))
    apply = time.perf_counter() - a
    size = len(pickle.dumps(table))
    print(f"RESULT events={n} merchants={len(table.profiles)} card_features_us={card / n * 1e6:.1f} "
          f"entity_features_us={entity / n * 1e6:.1f} local_fold_us={fold / n * 1e6:.1f} "
          f"replica_fold_us={apply / n * 1e6:.1f} table_pickle_bytes={size} "
          f"bytes_per_profile={size // max(1, len(table.profiles))}")


if __name__ == "__main__":
    main()
