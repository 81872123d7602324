"""Per-mode cost of parameter sync over Kafka: rounds/s, bytes per round, time per 1k updates.

Two workers in one process learn from their halves of a synthetic stream and sync through a
fresh topic; the same loop with ``mode="off"`` is the baseline. Prints one JSON line per run.

    python bench/sync.py --bootstrap 127.0.0.1:9092 --updates 1500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka.admin import AdminClient

from connectors.sources import SyntheticClassifier, SyntheticRatings
from models import Interactions, Model, create_model
from models.sync import create_sync

BATCH = 64


def _batches(app: str, updates: int, worker: int) -> list[tuple[Any, Any]]:
    rows = updates * BATCH * 2
    if app == "classifier":
        events, labels = next(SyntheticClassifier(seed=1).chunks(rows, rows))
        x = np.array([e["features"] for e in events], dtype=np.float32)
        lo = worker * rows // 2
        return [(x[i:i + BATCH], labels[i:i + BATCH]) for i in range(lo, lo + rows // 2, BATCH)]
    events, ratings = next(SyntheticRatings(seed=1, users=5000, items=2000).chunks(rows, rows))
    mine = [n for n, e in enumerate(events) if int(e["user"][1:]) % 2 == worker]
    return [
        (Interactions([events[n]["user"] for n in mine[i:i + BATCH]],
                      [events[n]["item"] for n in mine[i:i + BATCH]]), ratings[mine[i:i + BATCH]])
        for i in range(0, len(mine) - BATCH + 1, BATCH)
    ]


def _model(app: str) -> Model:
    if app == "classifier":
        return create_model("classifier", num_features=8, device="cpu", threads=1)
    return create_model("recommender", device="cpu", threads=1, user_capacity=10_000,
                        item_capacity=10_000)


def run(app: str, mode: str, bootstrap: str, updates: int, every: int, every_ms: float) -> dict:
    config = {"bootstrap.servers": bootstrap}
    topic = f"bench-sync-{uuid.uuid4().hex[:8]}"
    models = [_model(app) for _ in range(2)]
    data = [_batches(app, updates, w)[:updates] for w in range(2)]
    syncs = [
        create_sync(mode, m, kafka_config=config, topic=topic, worker_id=f"b{w}", shards=4,
                    every_updates=every, every_ms=every_ms, round_timeout_ms=2000)
        for w, m in enumerate(models)
    ]
    learn_s = sync_s = 0.0
    start = time.perf_counter()
    for step in range(len(data[0])):
        for model, sync, batches in zip(models, syncs, data, strict=True):
            t0 = time.perf_counter()
            model.learn(*batches[step])
            t1 = time.perf_counter()
            sync.after_learn()
            sync.poll()
            learn_s += t1 - t0
            sync_s += time.perf_counter() - t1
    wall = time.perf_counter() - start
    stats = syncs[0].stats()
    for s in syncs:
        s.close()
    if mode != "off":
        AdminClient(config).delete_topics([topic], operation_timeout=10)
    total_updates = 2 * len(data[0])
    closed = stats.get("rounds_closed", stats.get("applied", 0))
    return {
        "app": app, "mode": mode, "updates": total_updates, "wall_s": round(wall, 2),
        "learn_ms_per_1k": round(1000 * learn_s / total_updates * 1000, 1),
        "sync_ms_per_1k": round(1000 * sync_s / total_updates * 1000, 1),
        "rounds_or_deltas_applied_per_s": round(closed / wall, 1) if mode != "off" else None,
        "bytes_out_per_publish": (int(stats["bytes_out"] / stats["published"])
                                  if stats.get("published") else None),
        "rows_out_per_publish": (round(stats["rows_out"] / stats["published"], 1)
                                 if stats.get("published") else None),
        "staleness_ms_mean": stats.get("staleness_ms_mean"),
        "round_s_mean": stats.get("round_s_mean"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--updates", type=int, default=1000, help="learn steps per worker")
    parser.add_argument("--every", type=int, default=20, help="K: updates per delta")
    parser.add_argument("--every-ms", type=float, default=200.0, help="T: ms per delta")
    args = parser.parse_args()
    for app in ("classifier", "recommender"):
        for mode in ("off", "async", "sync"):
            result = run(app, mode, args.bootstrap, args.updates, args.every, args.every_ms)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
