"""CPU/GPU score parity and batched-inference latency for every streaminfer model.

Two sections:

1. Parity: the same weights scored on CPU (fp32) and on the GPU (fp32, bf16, fp16 autocast).
   Error is ``max |gpu - cpu| / max(1, |cpu|)`` (absolute for probabilities, relative for
   ratings above 1). Tolerances: fp32 1e-5, fp16 1e-2, bf16 5e-2 (8-bit mantissa). Without a
   GPU this section prints "no GPU: skipped".
2. Timing: ``model.predict(host batch)`` on the best device (host->device copy, forward and
   the copy back included, since that is what a worker pays), median and p90 of ``--repeats``
   runs per batch size, with ``torch.cuda.synchronize()`` around each run on GPU.

Run: ``python bench/gpu.py`` (about 10 s on CPU with defaults, under 60 s on a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streaminfer.models import Interactions, Model, RowBatch, configure_threads, create_model

TOLERANCES = {"off": 1e-5, "fp16": 1e-2, "bf16": 5e-2}
DEFAULT_BATCHES = "1,32,256,1024,4096,16384"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Check CPU vs GPU score parity (fp32 and AMP) and time batched inference per batch "
            "size for the classifier and recommender (and the identity model as the bare path)."
        )
    )
    parser.add_argument("--device", default="auto", help="device to time on (default: auto)")
    parser.add_argument(
        "--batch-sizes", default=DEFAULT_BATCHES, help=f"comma list (default: {DEFAULT_BATCHES})"
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per size (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per size")
    parser.add_argument("--features", type=int, default=32, help="classifier input width")
    parser.add_argument("--hidden", type=int, default=64, help="classifier hidden units (0 = LR)")
    parser.add_argument("--factors", type=int, default=32, help="recommender embedding size")
    parser.add_argument("--capacity", type=int, default=50_000, help="users = items = capacity")
    parser.add_argument(
        "--amp",
        default="off",
        help="comma list of AMP modes to time: off,bf16,fp16 (fp16 only on GPU; default: off)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--parity-device",
        default="cuda",
        help="device compared with CPU fp32 (default: cuda; 'cpu' checks CPU bf16 on a CPU box)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser.parse_args(argv)


def _models(args: argparse.Namespace, device: str, amp: str) -> dict[str, Model]:
    """Same seed everywhere, so two calls give identical weights on different devices."""
    common: dict[str, Any] = {"seed": 0, "device": device, "amp": amp, "threads": args.threads}
    return {
        "identity": create_model("identity"),
        "classifier": create_model(
            "classifier", num_features=args.features, hidden=args.hidden, **common
        ),
        "recommender": create_model(
            "recommender",
            num_factors=args.factors,
            user_capacity=args.capacity,
            item_capacity=args.capacity,
            **common,
        ),
    }


def _train_a_little(models: dict[str, Model], args: argparse.Namespace) -> None:
    """Move weights and statistics away from their init so parity compares real scores."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(loc=1.0, scale=2.0, size=(256, args.features)).astype(np.float32)
        models["classifier"].learn(x, (x[:, 0] > 1.0).astype(np.float32))
        users = [f"u{i}" for i in rng.integers(0, 500, 256)]
        items = [f"i{i}" for i in rng.integers(0, 500, 256)]
        models["recommender"].learn(Interactions(users, items), rng.uniform(1, 5, 256))


def _inputs(name: str, n: int, args: argparse.Namespace, rng: np.random.Generator) -> Any:
    if name in ("identity", "classifier"):
        return rng.normal(size=(n, args.features)).astype(np.float32)
    if name == "recommender(ids)":
        return Interactions(
            [f"u{i}" for i in rng.integers(0, 600, n)], [f"i{i}" for i in rng.integers(0, 600, n)]
        )
    users = torch.from_numpy(rng.integers(0, args.capacity, n))
    return RowBatch(users, torch.from_numpy(rng.integers(0, args.capacity, n)))


def parity(args: argparse.Namespace) -> list[dict[str, Any]]:
    target = torch.device(args.parity_device)
    print(f"== parity: CPU fp32 vs {target} ==")
    if target.type == "cuda" and not torch.cuda.is_available():
        print("no GPU: skipped")
        return []
    cpu = _models(args, "cpu", "off")
    _train_a_little(cpu, args)
    rng = np.random.default_rng(1)
    probes = {name: _inputs(name, 4096, args, rng) for name in ("classifier", "recommender(ids)")}
    results = []
    print(f"{'model':<18} {'amp':<5} {'max err':>10} {'tolerance':>10}  ok")
    for amp in ("off", "bf16", "fp16") if target.type == "cuda" else ("off", "bf16"):
        gpu = _models(args, str(target), amp)
        for name, probe in probes.items():
            key = name.split("(")[0]
            gpu[key].load_state_dict(cpu[key].state_dict())
            want, got = cpu[key].predict(probe), gpu[key].predict(probe)
            err = float(((got - want).abs() / want.abs().clamp_min(1.0)).max())
            ok = err <= TOLERANCES[amp]
            results.append({"model": name, "amp": amp, "max_err": err, "ok": ok})
            verdict = "yes" if ok else "NO"
            print(f"{name:<18} {amp:<5} {err:>10.2e} {TOLERANCES[amp]:>10.0e}  {verdict}")
    return results


def _time(
    fn: Callable[[], Any], sync: Callable[[], None], warmup: int, repeats: int
) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device != "auto":
        device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    amps = [a.strip() for a in args.amp.split(",") if a.strip()]
    print(f"\n== predict latency on {device} (torch threads: {torch.get_num_threads()}) ==")
    print(f"{'model':<18} {'amp':<5} {'batch':>6} {'median ms':>10} {'p90 ms':>9} {'rows/s':>12}")
    results = []
    rng = np.random.default_rng(2)
    for amp in amps:
        if amp == "fp16" and device.type != "cuda":
            print(f"{'(all)':<18} {amp:<5} skipped: fp16 autocast needs CUDA")
            continue
        models = _models(args, str(device), amp)
        _train_a_little(models, args)
        for name in ("identity", "classifier", "recommender(rows)", "recommender(ids)"):
            if name == "identity" and amp != "off":
                continue
            model = models[name.split("(")[0]]
            for n in sizes:
                batch = _inputs(name, n, args, rng)
                times = _time(
                    lambda m=model, b=batch: m.predict(b), sync, args.warmup, args.repeats
                )
                median = statistics.median(times)
                p90 = sorted(times)[max(0, int(0.9 * len(times)) - 1)]
                rate = n / (median / 1000.0)
                results.append(
                    {"model": name, "amp": amp, "batch": n, "median_ms": median, "p90_ms": p90}
                )
                print(f"{name:<18} {amp:<5} {n:>6} {median:>10.3f} {p90:>9.3f} {rate:>12,.0f}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_threads(args.threads)
    started = time.perf_counter()
    parity_results = parity(args)
    timing_results = timing(args)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps({"parity": parity_results, "timing": timing_results}, indent=2)
        )
    return 0 if all(r["ok"] for r in parity_results) else 1


if __name__ == "__main__":
    sys.exit(main())
