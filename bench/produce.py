"""Producer and consumer throughput of streaminfer's own Kafka path, on a real broker.

Produce: ``SyntheticClassifier`` -> ``RecordCodec.encode_many`` (Avro single-object) ->
``connectors.publish.publish_chunks`` (confluent-kafka, idempotent, lz4) into a fresh topic,
with 1 and with N processes side by side in one run, alternating for ``--rounds`` rounds (the
best of each counts; each process has its own seed, hence its own event-id range). A run is
timed from a barrier all processes pass after their set-up to the last process's final flush
(every record acknowledged), so it includes generating the records. Consume: one
confluent-kafka consumer reading the last topic back with ``consume(2000)``, once raw and once
also decoding every value with ``RecordCodec.decode``.

Usage: ``python bench/produce.py --count 200000 --procs 1,2 --write-docs``
(``--profile`` adds a cProfile of a single-process produce and of the decode loop).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import pstats
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

from _common import (
    create_topics,
    delete_topics,
    docs_footer,
    markdown_table,
    publish_synthetic,
    rate,
    split_count,
    start_run,
    unique_name,
    write_docs_section,
)

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_consumer, make_producer
from streaminfer.connectors.publish import publish_chunks

TARGET_PRODUCE = 100_000


@dataclass
class ProduceResult:
    procs: int
    sent: int
    failed: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return rate(self.sent, self.seconds)

    @property
    def cpu_us(self) -> float:
        """Producer CPU per event (all producing processes): steadier than rates on a
        shared machine."""
        return self.cpu_seconds / self.sent * 1e6 if self.sent else 0.0


@dataclass
class ConsumeResult:
    label: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return rate(self.events, self.seconds)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Produce and consume throughput through streaminfer's Kafka code path.",
        epilog="Example: python bench/produce.py --count 200000 --procs 1,2 --write-docs",
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers.")
    parser.add_argument("--count", type=int, default=200_000,
                        help="Events per produce run (split over the processes).")
    parser.add_argument("--procs", default="1,2",
                        help="Comma-separated process counts to run side by side, e.g. 1,2.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Alternating rounds over --procs; the best round of each counts.")
    parser.add_argument("--num-features", type=int, default=8, help="Feature vector length.")
    parser.add_argument("--keys", type=int, default=100_000, help="Distinct entity keys.")
    parser.add_argument("--partitions", type=int, default=4, help="Partitions of each topic.")
    parser.add_argument("--batch", type=int, default=2000, help="consume(N) batch size.")
    parser.add_argument("--profile", action="store_true",
                        help="Also cProfile a 1-process produce and the decode loop.")
    parser.add_argument("--keep-topics", action="store_true", help="Do not delete bench topics.")
    parser.add_argument("--write-docs", action="store_true",
                        help="Rewrite the 'produce' section of docs/benchmarks.md.")
    args = parser.parse_args(argv)
    args.procs = [int(p) for p in args.procs.split(",") if p.strip()]
    if not args.procs or min(args.procs) < 1:
        parser.error("--procs needs one or more positive integers")
    return args


def _produce_worker(bootstrap: str, topic: str, count: int, seed: int, num_features: int,
                    keys: int, barrier: Any, results: Any) -> None:
    """One producing process: connect first, then wait for the others, then publish."""
    make_producer({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)  # warm DNS/conn
    barrier.wait()
    started, cpu = time.monotonic(), _cpu_seconds()
    report = publish_synthetic(bootstrap, topic, count, seed=seed, num_features=num_features,
                               keys=keys)
    results.put((started, time.monotonic(), report.sent, report.failed, _cpu_seconds() - cpu))


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (Python and librdkafka's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def produce_run(args: argparse.Namespace, topic: str, procs: int) -> ProduceResult:
    """``args.count`` events split over ``procs`` spawned processes, timed barrier -> last ack."""
    ctx = mp.get_context("spawn")  # no fork after librdkafka threads exist in this process
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=_produce_worker,
                    args=(args.bootstrap, topic, share, 1000 + i, args.num_features, args.keys,
                          barrier, results))
        for i, share in enumerate(split_count(args.count, procs))
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    seconds = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    return ProduceResult(procs, sum(o[2] for o in outcomes), sum(o[3] for o in outcomes), seconds,
                         sum(o[4] for o in outcomes))


def consume_run(args: argparse.Namespace, topic: str, expected: int, decode: bool,
                profile: cProfile.Profile | None = None) -> ConsumeResult:
    """Read ``expected`` events with a fresh group; time first received batch -> last event.

    The first batch is left out of the count and the clock (it carries the group join).
    """
    consumer = make_consumer({"bootstrap.servers": args.bootstrap}, unique_name("bench-consume"))
    codec = RecordCodec("event", "single-object", topic=topic)
    consumer.subscribe([topic])
    got, first_at, first_n = 0, 0.0, 0
    deadline = time.monotonic() + 120
    if profile is not None:
        profile.enable()
    try:
        while got < expected and time.monotonic() < deadline:
            messages = consumer.consume(args.batch, 1.0)
            if not messages:
                continue
            if decode:
                dec = codec.decode
                for msg in messages:
                    if msg.error() is None:
                        dec(msg.value())
            n = sum(1 for m in messages if m.error() is None)
            got += n
            if not first_at:
                first_at, first_n = time.perf_counter(), n
        ended = time.perf_counter()
    finally:
        if profile is not None:
            profile.disable()
        consumer.close()
    if got < expected:
        print(f"  warning: consumed only {got:,} of {expected:,}", file=sys.stderr)
    label = "consume + decode (RecordCodec.decode)" if decode else "consume (raw)"
    return ConsumeResult(label, got - first_n, ended - first_at)


def _top(profile: cProfile.Profile, title: str, limit: int = 14) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(limit)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return f"--- {title} (top {limit} by own time) ---\n" + "\n".join(lines[start:])


def profile_produce(args: argparse.Namespace, topic: str) -> str:
    """cProfile one in-process publish of ``count / 2`` events (the 2-proc per-process load)."""
    from _common import synthetic_chunks

    count = args.count // 2
    codec = RecordCodec("event", "single-object", topic=topic)
    producer = make_producer({"bootstrap.servers": args.bootstrap})
    profile = cProfile.Profile()
    profile.enable()
    publish_chunks(producer, topic, codec,
                   synthetic_chunks(count, 7, args.num_features, args.keys), key_field="key")
    profile.disable()
    return _top(profile, f"produce {count:,} events, 1 process")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    load = start_run()
    plan = [(r, p) for r in range(args.rounds) for p in args.procs]
    topics = [unique_name(f"bench-produce-{p}p") for _r, p in plan]
    create_topics(args.bootstrap, topics, args.partitions)
    produced: list[ProduceResult] = []
    consumed: list[ConsumeResult] = []
    profiles: list[str] = []
    try:
        for (rnd, procs), topic in zip(plan, topics, strict=True):
            result = produce_run(args, topic, procs)
            produced.append(result)
            print(f"round {rnd + 1} produce {procs} proc(s): {result.sent:>9,} events in "
                  f"{result.seconds:6.2f}s = {result.rate:>10,.0f} ev/s  "
                  f"producer CPU {result.cpu_us:.1f} us/event"
                  f" (failed {result.failed})")
        last = topics[-1]
        produced = [max((r for r in produced if r.procs == p), key=lambda r: r.rate)
                    for p in args.procs]
        for r in produced:
            print(f"best of {args.rounds}: {r.procs} proc(s) {r.rate:>10,.0f} ev/s, "
                  f"producer CPU {r.cpu_us:.1f} us/event")
        for decode in (False, True):
            c = consume_run(args, last, args.count, decode)
            consumed.append(c)
            print(f"{c.label:<38}: {c.events:>9,} events in {c.seconds:6.2f}s"
                  f" = {c.rate:>10,.0f} ev/s")
        if args.profile:
            profile_topic = unique_name("bench-produce-prof")
            topics.append(profile_topic)
            create_topics(args.bootstrap, [profile_topic], args.partitions)
            profiles.append(profile_produce(args, profile_topic))
            prof = cProfile.Profile()
            consume_run(args, last, args.count, True, prof)
            profiles.append(_top(prof, "consume + decode"))
            print("\n\n".join(profiles))
    finally:
        if not args.keep_topics:
            delete_topics(args.bootstrap, topics)

    best = max(produced, key=lambda r: r.rate)
    verdict = "meets" if best.rate >= TARGET_PRODUCE else "MISSES"
    summary = f"best produce rate {best.rate:,.0f} ev/s ({best.procs} procs) {verdict} " \
              f"the {TARGET_PRODUCE:,} ev/s target"
    base = next((r for r in produced if r.procs == 1), None)
    if base is not None:
        for r in produced:
            if r.procs != 1:
                summary += f"; {r.procs} procs / 1 proc = {r.rate / base.rate:.2f}x"
    print(summary)
    if args.write_docs:
        write_docs_section("produce", _docs(args, produced, consumed, summary, load))
        print("wrote the 'produce' section of docs/benchmarks.md")
    return 0


def _docs(args: argparse.Namespace, produced: list[ProduceResult],
          consumed: list[ConsumeResult], summary: str, load: str) -> str:
    rows = [[f"produce, {r.procs} process(es), best of {args.rounds}", f"{r.sent:,}",
             f"{r.seconds:.2f}", f"{r.rate:,.0f}", f"{r.cpu_us:.1f}"] for r in produced]
    rows += [[c.label, f"{c.events:,}", f"{c.seconds:.2f}", f"{c.rate:,.0f}", ""]
             for c in consumed]
    table = markdown_table(["path", "events", "seconds", "events/s",
                            "producer CPU us/event (all threads)"], rows)
    return f"""## Produce and consume (`bench/produce.py`)

Synthetic classifier events ({args.num_features} features, {args.keys:,} keys) as Avro
single-object records through streaminfer's own producer path (`SyntheticClassifier` ->
`RecordCodec.encode_many` -> `publish_chunks`: idempotent producer, `acks=all`, lz4) into a fresh
{args.partitions}-partition topic on the local single broker, then read back by one consumer with
`consume({args.batch})`. Best of {args.rounds} alternating rounds per process count; producer
CPU is user+system time of the producing processes (Python and librdkafka threads), which
varies less than rates on this shared machine. Produce time runs from a barrier after set-up
to the last acknowledged record (generation included); consume time from the first received
batch (left out) to the last event. The broker and Redis share the same cores.

{table}

{summary}.

{docs_footer(load)}"""


if __name__ == "__main__":
    sys.exit(main())
