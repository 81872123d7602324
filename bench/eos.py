"""What exactly-once costs: pipeline (b) at-least-once vs ``--processing-guarantee
exactly-once``, side by side in one run, alternating rounds on the same pre-filled topic.

Each round drains the topic with a fresh consumer group through ``HotPath`` (the classifier
model, Redis and the predictions topic, as ``bench/pipeline.py`` (b)); exactly-once adds one
Kafka transaction per input partition per batch (begin, produce, send offsets, commit). The
ratio of the best rounds is reported.

Usage: ``python bench/eos.py --count 100000 --write-docs``
"""

from __future__ import annotations

import argparse
import threading

from _common import (
    create_topics,
    delete_topics,
    docs_footer,
    markdown_table,
    publish_synthetic,
    start_run,
    unique_name,
    write_docs_section,
)
from pipeline import Result, _clear_redis, _line, _settings, drain_lane

from streaminfer.streams.app import load_app
from streaminfer.streams.metrics import PipelineMetrics
from streaminfer.streams.worker import Worker, WorkerOptions, build_handler, build_hot_path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="Redis for predictions (a database it may flush).")
    parser.add_argument("--count", type=int, default=100_000, help="Events pre-filled.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phase-seconds", type=float, default=120.0)
    parser.add_argument("--num-features", type=int, default=8)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--write-docs", action="store_true",
                        help="Write the table to docs/benchmarks.md.")
    return parser.parse_args(argv)


def drain(args: argparse.Namespace, guarantee: str, topic: str, predictions: str) -> Result:
    settings = _settings(args, topic, predictions).model_copy(
        update={"processing_guarantee": guarantee})
    app = load_app(settings.app, settings)
    model = Worker(app, settings, WorkerOptions()).fresh_model()
    handler = build_handler(app, settings, model)
    metrics = PipelineMetrics(window=args.count)
    hot = build_hot_path(app, settings, handler, metrics, threading.Lock())
    return drain_lane(hot, metrics, guarantee, args.count, args.phase_seconds)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    load = start_run()
    topic, predictions = unique_name("bench-eos-events"), unique_name("bench-eos-pred")
    create_topics(args.bootstrap, [topic, predictions], args.partitions)
    _clear_redis(args.redis_url)
    rounds: dict[str, list[Result]] = {"at-least-once": [], "exactly-once": []}
    try:
        publish_synthetic(args.bootstrap, topic, args.count, seed=1,
                          num_features=args.num_features, keys=args.keys)
        for i in range(args.rounds):
            for guarantee in rounds:
                r = drain(args, guarantee, topic, predictions)
                rounds[guarantee].append(r)
                print(f"round {i + 1} {_line(r)}")
    finally:
        delete_topics(args.bootstrap, [topic, predictions])
    best = {g: max(rs, key=lambda r: r.rate) for g, rs in rounds.items()}
    alo, eos = best["at-least-once"], best["exactly-once"]
    ratio = eos.rate / alo.rate if alo.rate else 0.0
    print(f"exactly-once / at-least-once throughput: {ratio:.2f}")
    if args.write_docs:
        rows = [[g, f"{r.rate:,.0f}", f"{r.p50_ms:.0f}", f"{r.p99_ms:.0f}",
                 f"{r.batch_avg:,.0f}"] for g, r in best.items()]
        body = ("Pipeline (b) (classifier, Redis, predictions topic; one lane, a pre-filled "
                f"topic of {args.count:,} events, {args.partitions} partitions), best of "
                f"{args.rounds} alternating rounds each:\n\n"
                + markdown_table(["guarantee", "events/s", "p50 ms (backlog)",
                                  "p99 ms (backlog)", "batch avg"], rows)
                + f"\n\nExactly-once runs at **{ratio:.2f}x** the at-least-once throughput "
                "(one transaction per input partition per batch).\n\n"
                + docs_footer(load))
        write_docs_section("Exactly-once cost (bench/eos.py)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

