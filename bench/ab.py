"""A/B of the classifier pipeline's throughput, ``bench/pipeline.py`` (b), between two checkouts.

Both drain the same pre-filled topic, each round in a fresh process and a fresh consumer
group, alternating A, B, A, B... so a shared host's drifting speed hits both alike; the best
round of each counts, and their ratio is what to compare (absolute rates here vary by ~2x
over a day). Each checkout runs its own ``bench/pipeline.py`` ``drain`` (the (b) run). Each
round also reports the redis-server's CPU per event (``/proc``, over the drain): give it a
Redis nobody else loads.

Usage: ``git worktree add /tmp/base HEAD~1 && python bench/ab.py --base /tmp/base``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import (
    ROOT,
    cpu_seconds,
    create_topics,
    delete_topics,
    publish_synthetic,
    redis_server_pid,
    start_run,
    unique_name,
)

#: Runs one (b) drain of the checkout at argv[1] and prints its result as JSON.
_DRAIN = """
import json, sys
tree, topic, predictions, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path[:0] = [tree + "/bench", tree]
import pipeline
args = pipeline._parse_args(sys.argv[5:])
r = pipeline.drain(args, "b", topic, predictions, count, False)
print("RESULT " + json.dumps({"rate": r.rate, "cpu_us": r.cpu_us, "note": r.note}))
"""

TOLERANCE = 0.10


def drain(tree: Path, topic: str, predictions: str, count: int, extra: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _DRAIN, str(tree), topic, predictions,
                          str(count), *extra], cwd=tree, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)}, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise RuntimeError(f"{tree}: no result\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="The checkout to compare to.")
    parser.add_argument("--head", type=Path, default=ROOT, help="[default: this checkout]")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    start_run()
    topic, predictions = unique_name("bench-ab-events"), unique_name("bench-ab-pred")
    create_topics(args.bootstrap, [topic, predictions], args.partitions)
    extra = ["--bootstrap", args.bootstrap, "--redis-url", args.redis_url,
             "--count", str(args.count), "--phase-seconds", "120"]
    rates: dict[str, list[float]] = {"base": [], "head": []}
    redis_pid = redis_server_pid(args.redis_url)
    try:
        publish_synthetic(args.bootstrap, topic, args.count, seed=1, keys=100_000)
        for i in range(args.rounds):
            for name, tree in (("base", args.base), ("head", args.head)):
                before = cpu_seconds(redis_pid)
                result = drain(tree.resolve(), topic, predictions, args.count, extra)
                redis_us = (cpu_seconds(redis_pid) - before) / args.count * 1e6
                rates[name].append(result["rate"])
                print(f"round {i + 1} {name}: {result['rate']:,.0f} ev/s "
                      f"({result['cpu_us']:.1f} us CPU/event, redis-server {redis_us:.1f} "
                      f"us/event) {result['note']}", flush=True)
    finally:
        delete_topics(args.bootstrap, [topic, predictions])
    base, head = max(rates["base"]), max(rates["head"])
    ratio = head / base
    ok = ratio >= 1 - TOLERANCE
    print(f"best: base {base:,.0f} ev/s, head {head:,.0f} ev/s, head/base = {ratio:.2f} "
          f"(within {TOLERANCE:.0%}: {'met' if ok else 'missed'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
