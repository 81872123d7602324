"""Cost of keeping user rows in the partition's table (``streams.user_state``) per batch.

The recommender's learning step (``RatingLearner.process``) with and without writing the
touched users' rows, in-process on ``SyntheticRatings`` (500 users x 200 items). The stores
are the worker's own (``FaustTableStore``: one ``call_soon_threadsafe`` per batch) and the
same store written one record at a time (``put``: one ``call_soon_threadsafe`` per record),
over a stand-in table whose changelog send only counts, on an event loop running in another
thread as Faust's does.

Usage: ``python bench/user_state.py``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streaminfer.connectors.sources import SyntheticRatings
from streaminfer.models.factory import create_model
from streaminfer.models.recommender import Interactions
from streaminfer.streams.app import Learning
from streaminfer.streams.batch import Batch
from streaminfer.streams.learning import InlineLearner
from streaminfer.streams.table_store import FaustTableStore
from streaminfer.streams.user_state import UserState

PARTITIONS = 6


class _Table:
    """What the stores use of a Faust table: its local data and the changelog send."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sent = 0

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.sent += 1


class _App:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop


class _Msg:
    def __init__(self, partition: int) -> None:
        self._p = partition

    def partition(self) -> int:
        return self._p


def batches(size: int, count: int) -> list[Batch]:
    events, ratings = next(SyntheticRatings(seed=3).chunks(count, count))
    out = []
    for start in range(0, count, size):
        part = events[start : start + size]
        users = [e["user"] for e in part]
        msgs = [_Msg(int(u[1:]) % PARTITIONS) for u in users]
        items = [e["item"] for e in part]
        out.append(Batch(msgs, [e["event_id"] for e in part], users,  # type: ignore[arg-type]
                         np.zeros(len(part), np.int64),
                         {"user": users, "item": items, "rating": ratings[start : start + size]},
                         Interactions(users, items)))
    return out


class _PerRecordStore(FaustTableStore):
    """``FaustTableStore`` writing a batch one record at a time (one loop callback each):
    what ``UserState`` did before batching."""

    def put_many(self, records: Sequence[tuple[int, bytes, bytes | None]]) -> None:
        for partition, key, value in records:
            FaustTableStore.put_many(self, [(partition, key, value)])


def run(size: int, store: str, loop: asyncio.AbstractEventLoop) -> tuple[float, int]:
    model = create_model("recommender", device="cpu")
    kind = {"per record": _PerRecordStore, "batched": FaustTableStore}.get(store)
    users = UserState(kind(_Table(), _App(loop)), model) if kind else None  # type: ignore[arg-type]
    learner = InlineLearner(model, 32, learning=Learning(label="rating", loss="mse"),
                            state=users)
    data = batches(size, 20_000)
    scores = np.zeros(size, np.float32)
    times = []
    for batch in data:
        start = time.perf_counter()
        learner.process(batch, scores[: len(batch)], [], [])
        times.append(time.perf_counter() - start)
    return float(np.median(times[len(times) // 2 :])) * 1000, users.saved if users else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Cost of saving the touched users' rows to the partition's table per "
                    "learning batch (recommender), per record against batched; prints a "
                    "markdown table.")
    parser.add_argument("--sizes", default="32,128,512",
                        help="Comma-separated batch sizes [default: 32,128,512].")
    sizes = [int(v) for v in parser.parse_args(argv).sizes.split(",")]
    torch.set_num_threads(1)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    print("Median ms per batch over the second half of 20k ratings (users have history).")
    print("| batch | store | learn ms/batch | + user rows ms/batch | overhead | records/batch |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        base = min(run(size, "none", loop)[0] for _ in range(3))
        for store in ("per record", "batched"):
            runs = [run(size, store, loop) for _ in range(3)]
            cost, saved = min(r[0] for r in runs), runs[0][1]
            print(f"| {size} | {store} | {base:.2f} | {cost:.2f} | "
                  f"{(cost / base - 1) * 100:+.0f}% | {saved / (20_000 / size):.0f} |")
    loop.call_soon_threadsafe(loop.stop)


if __name__ == "__main__":
    main()
