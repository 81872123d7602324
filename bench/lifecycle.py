"""Model lifecycle costs, side by side in one run: int8 vs fp32 serving, and a hot swap.

    python bench/lifecycle.py [--features 64] [--hidden 256] [--batch 512] [--repeat 200]

* fp32 vs ``--quantize int8`` (``models.quantize``) for an OnlineClassifier MLP of width
  ``--hidden``: batches scored per second, the cost of rebuilding the int8 copy, and
  |int8 - fp32| of the scores (mean, p99, max) on held-out rows.
* one hot swap through ``streams.model_swap`` (directory registry): load + validate time
  off the hot path, and the time the model lock is held for the switch.
* the cost of candidates beside the active version (``streams.candidates``): a batch's
  serving with a shadow and with a canary, and a labelled batch's learning with K search
  candidates (each one more forward and backward pass).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from streaminfer.connectors.prediction import Predictions
from streaminfer.connectors.registry_store import DirectoryRegistryBlobs
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.quantize import Int8Serving, quantized_copy
from streaminfer.models.registry import ModelRegistry
from streaminfer.streams.app import Learning
from streaminfer.streams.batch import Batch
from streaminfer.streams.candidates import Candidate, Candidates
from streaminfer.streams.learning import Learner, LearnerHooks
from streaminfer.streams.model_swap import ModelSwap, SwapTargets


def _rate(fn, x: np.ndarray, repeat: int) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(repeat):
        fn(x)
    return repeat / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    d = args.features
    x = rng.normal(size=(8192, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] > 0).astype(np.float32)
    model = OnlineClassifier(d, hidden=args.hidden, seed=0, device="cpu", lr=0.01)
    for start in range(0, 4096, 128):
        model.learn(x[start:start + 128], y[start:start + 128])
    held = x[4096:4096 + args.batch]
    serving = Int8Serving(model, refresh_s=0.0)
    fp32_rate = _rate(model.predict, held, args.repeat)
    int8_rate = _rate(serving.predict, held, args.repeat)
    start = time.perf_counter()
    for _ in range(20):
        quantized_copy(model)
    rebuild_ms = (time.perf_counter() - start) / 20 * 1000
    diff = (model.predict(x[4096:]) - serving.predict(x[4096:])).abs()
    print(f"MLP {d}->{args.hidden}->1, batch {args.batch}, 1 torch thread")
    print(f"  fp32: {fp32_rate * args.batch:,.0f} rows/s   int8: {int8_rate * args.batch:,.0f} "
          f"rows/s   int8/fp32 = {int8_rate / fp32_rate:.2f}x")
    print(f"  int8 copy rebuild: {rebuild_ms:.2f} ms")
    print(f"  |int8 - fp32| over {len(diff)} rows: mean {float(diff.mean()):.4f}, p99 "
          f"{float(diff.quantile(0.99)):.4f}, max {float(diff.max()):.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(DirectoryRegistryBlobs(Path(tmp)))
        for seed in (1, 2):
            registry.register("classifier", OnlineClassifier(d, hidden=args.hidden, seed=seed,
                                                             device="cpu"))
        registry.promote("classifier", 1)

        def build() -> OnlineClassifier:
            return OnlineClassifier(d, hidden=args.hidden, seed=0, device="cpu")

        class Handler:
            model, int8, recent = build(), None, held

        swap = ModelSwap("classifier", registry, build,
                         SwapTargets(threading.Lock(), handler=Handler()), outputs=1)
        swap.initial(Handler.model)
        for v in (2, 1, 2, 1, 2):
            registry.promote("classifier", v)
            swap.check_once()
        load = sorted(s["load_s"] * 1000 for s in swap.swaps)
        locked = sorted(s["locked_s"] * 1e6 for s in swap.swaps)
        print(f"  hot swap ({len(load)} swaps): load+validate median {load[len(load) // 2]:.1f}"
              f" ms off the hot path; model lock held median {locked[len(locked) // 2]:.0f} us")
    _candidates(d, args.hidden, held, args.repeat)


def _per_batch_ms(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


def _candidates(d: int, hidden: int, held: np.ndarray, repeat: int) -> None:
    def build(lr: float = 0.01) -> OnlineClassifier:
        return OnlineClassifier(d, hidden=hidden, seed=0, device="cpu", lr=lr)

    active = build()
    n = len(held)
    batch = Batch([], [f"e{i}" for i in range(n)], [f"user-{i}" for i in range(n)],
                  np.zeros(n, np.int64), features=held)
    y = (held[:, 0] > 0).astype(np.float32)

    def serve(candidates: Candidates) -> None:
        scores = active.predict(held).numpy()
        predictions = Predictions(batch.event_ids, batch.keys, {"score": scores.tolist()},
                                  [0] * n, 0, "classifier", str(active.version))
        candidates.serve(batch, predictions)

    alone = Candidates(["score"])
    shadow = Candidates(["score"], shadow=Candidate("shadow", 2, build()))
    canary = Candidates(["score"], canary_share=0.05, canary=Candidate("canary", 3, build()))
    print(f"  candidates, per batch of {n}: serving alone "
          f"{_per_batch_ms(lambda: serve(alone), repeat):.2f} ms, with a shadow "
          f"{_per_batch_ms(lambda: serve(shadow), repeat):.2f} ms, with a 5% canary "
          f"{_per_batch_ms(lambda: serve(canary), repeat):.2f} ms")
    for k in (0, 1, 4):
        search = [Candidate("search", 1, build(lr), params=f"lr={lr}")
                  for lr in (0.001, 0.01, 0.1, 1.0)[:k]]
        candidates = Candidates(["score"], metrics_kind="classifier",
                                served=Learning().served, search=search)
        learner = Learner(build(), 128, LearnerHooks(candidates=candidates), max_steps=0)
        ms = _per_batch_ms(lambda learner=learner: learner._learn(
            held, y, np.zeros(n, np.float32)), max(repeat // 4, 5))
        print(f"  learning a labelled batch of {n} (steps of 128) with {k} search "
              f"candidate(s): {ms:.2f} ms")


if __name__ == "__main__":
    main()
