"""Soak: two learning workers (parameter sync on) at half of their measured capacity for N
minutes; every 10 s it samples each worker's RSS, open fds and threads, the consumer lag,
the p99 event latency, Redis memory and the broker's log size. Not part of CI.

1. Capacity: a burst of ``--capacity-events`` pre-filled events is drained by the two workers;
   capacity = events / drain time (unless ``--rate`` is given).
2. Soak: events at half that rate (labels follow each event) for ``--minutes``.
3. Report: a PNG plot (matplotlib) and a table in docs/reliability.md (``--write-docs``), with
   the RSS slope (least squares) over the last 10 minutes, the join's stated memory bound
   (``join_max_entries`` times the bytes of an entry, measured here), p99 steadiness, and the
   ranges of fds and threads. The broker log size is that of this run's topics only.

Usage: ``python bench/soak.py --minutes 20 --write-docs`` (needs the local broker and Redis;
the workers use ``--redis-url``, a database this script flushes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis
from _common import (
    ROOT,
    create_topics,
    delete_topics,
    docs_footer,
    markdown_table,
    start_run,
    write_docs_section,
)
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms
from streaminfer.streams.join import JoinState, MemoryJoinStore
from streaminfer.streams.settings import Settings

DOC = ROOT / "docs" / "reliability.md"
PLOT = ROOT / "docs" / "soak.png"
LAST_MIN = 10.0  # the slope and the steadiness are judged over this many last minutes


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13",
                        help="Redis for the workers (a database it may flush).")
    parser.add_argument("--minutes", type=float, default=20.0, help="Soak length.")
    parser.add_argument("--every-s", type=float, default=10.0, help="Sampling period.")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="Events/s to offer; 0: half of the measured capacity.")
    parser.add_argument("--capacity-events", type=int, default=30_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--broker-log-dir",
                        default=str(Path.home() / ".cache/streaminfer/state/kafka/data"))
    parser.add_argument("--write-docs", action="store_true",
                        help="Write the plot and the table to docs/.")
    return parser.parse_args(argv)


class Workers:
    def __init__(self, args: argparse.Namespace, events: str, feedback: str, preds: str,
                 log_dir: Path) -> None:
        self.group = f"soak-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "KAFKA_BOOTSTRAP": args.bootstrap,
                    "REDIS_URL": args.redis_url, "STREAMINFER_APP": "classifier",
                    "STREAMINFER_EVENTS_TOPIC": events, "STREAMINFER_FEEDBACK_TOPIC": feedback,
                    "STREAMINFER_PREDICTIONS_TOPIC": preds, "STREAMINFER_CONSUMER_GROUP":
                    self.group, "STREAMINFER_LEARN": "true", "STREAMINFER_SYNC_MODE": "sync",
                    "STREAMINFER_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
                        "PYTHONPATH")]))}
        self.procs = [subprocess.Popen([sys.executable, "-m", "streaminfer", "worker"],
                                       env=self.env, stdout=(log_dir / f"w{i}.log").open("wb"),
                                       stderr=subprocess.STDOUT) for i in range(2)]

    def snapshots(self, client: redis.Redis) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs:
            raw = client.get(f"metrics:classifier:{socket.gethostname()}-{proc.pid}")
            out.append(json.loads(raw) if raw else {})
        return out

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _proc(pid: int) -> tuple[float, int, int]:
    """RSS (MB), open fds, threads of ``pid``."""
    rss = threads = 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), int(threads)


def _lag(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else 0)
        return lag
    finally:
        consumer.close()


def _log_mb(log_dir: str, prefixes: tuple[str, ...]) -> float:
    """Disk used by this run's partitions (``{topic}-{n}`` folders) in the broker's log dir:
    the broker is shared, so its whole size says nothing about this run (and takes long to
    walk). Blocks, as ``du`` counts them: each active segment's index files are preallocated
    sparse files of 10 MB whose length is no measure of the log."""
    total = 0
    with contextlib.suppress(OSError), os.scandir(log_dir) as entries:
        for entry in entries:
            if not entry.name.startswith(prefixes):
                continue
            for root, _, files in os.walk(entry.path):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


def _run_topics(bootstrap: str, prefixes: tuple[str, ...]) -> list[str]:
    """This run's topics, the workers' own included (DLQs, sync, changelogs, owners)."""
    names = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    return sorted(name for name in names if name.startswith(prefixes))


def join_bytes_per_entry(num_features: int, batch: int = 100, n: int = 20_000
                         ) -> tuple[float, float]:
    """Bytes per held join entry (an event row; a waiting label), measured with tracemalloc
    on a ``JoinState`` over an in-memory store (the worker's Faust table is a dict too)."""
    import tracemalloc

    out = []
    for kind in ("events", "labels"):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        join = JoinState(MemoryJoinStore(), 600_000, max_entries=n)
        ts = np.full(batch, 1_000, np.int64)
        for start in range(0, n, batch):
            ids = [f"{uuid.uuid4().hex[:6]}-{i}" for i in range(start, start + batch)]
            if kind == "events":
                join.add_events(0, start, ids, ts, np.ones((batch, num_features), np.float32),
                                np.zeros(batch, np.float32))
            else:
                join.add_feedback(0, list(range(start, start + batch)), ids,
                                  np.ones(batch, np.float32), ts)
        out.append((tracemalloc.get_traced_memory()[0] - base) / join.size)
        tracemalloc.stop()
    return out[0], out[1]


def _publish(args: argparse.Namespace, events: str, feedback: str, count: int, rate: float,
             stop: threading.Event) -> None:
    """``count`` events (0: until ``stop``), each followed by its label, at ``rate``/s
    (0: as fast as possible)."""
    producer = make_producer({"bootstrap.servers": args.bootstrap})
    ev, lab = RecordCodec("event"), RecordCodec("feedback")
    rng = np.random.default_rng(0)
    run = uuid.uuid4().hex[:6]
    started, i = time.perf_counter(), 0
    while not stop.is_set() and (count == 0 or i < count):
        x = rng.normal(size=8).astype(np.float32)
        key, eid, ts = f"k{i % args.keys}", f"{run}-{i}", now_ms()
        producer.produce(events, ev.encode({"event_id": eid, "key": key, "ts": ts,
                                            "features": x.tolist()}), key.encode())
        producer.produce(feedback, lab.encode({"event_id": eid, "key": key, "ts": ts,
                                               "label": float(x[0] > 0)}), key.encode())
        producer.poll(0)
        i += 1
        if rate:
            ahead = i / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(60)


def _events_done(workers: Workers, client: redis.Redis) -> int:
    return sum(int(s.get("events", 0)) for s in workers.snapshots(client))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    load = start_run()
    tag = uuid.uuid4().hex[:8]
    events, feedback, preds = f"soak-ev-{tag}", f"soak-fb-{tag}", f"soak-pred-{tag}"
    topics = [events, feedback, preds]
    create_topics(args.bootstrap, topics, args.partitions)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    workers = Workers(args, events, feedback, preds, log_dir)
    prefixes = (*topics, workers.group)
    samples: list[dict[str, float]] = []
    stop = threading.Event()
    producer: threading.Thread | None = None
    try:
        deadline = time.monotonic() + 180
        while len([s for s in workers.snapshots(client) if s.get("partitions")]) < 2:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers not ready; logs in {log_dir}")
            time.sleep(1)
        rate = args.rate
        if not rate:
            _publish(args, events, feedback, args.capacity_events, 0.0, threading.Event())
            base, t0 = _events_done(workers, client), time.perf_counter()
            while _events_done(workers, client) < args.capacity_events:
                time.sleep(0.5)
            capacity = (args.capacity_events - base) / (time.perf_counter() - t0)
            rate = capacity / 2
            print(f"capacity {capacity:,.0f} events/s (2 workers, learning, sync); "
                  f"soaking at {rate:,.0f}/s")
        producer = threading.Thread(target=_publish, args=(args, events, feedback, 0, rate,
                                                           stop), daemon=True)
        producer.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(args.every_s)
            snaps = workers.snapshots(client)
            procs = [_proc(p.pid) for p in workers.procs]
            sample = {
                "t_s": time.monotonic() - started,
                "rss_mb": max(p[0] for p in procs), "rss_sum_mb": sum(p[0] for p in procs),
                "fds": max(p[1] for p in procs), "threads": max(p[2] for p in procs),
                "lag": _lag(args.bootstrap, f"{workers.group}-classifier-offsets", events,
                            args.partitions),
                "p99_ms": max(float(s.get("p99_ms", 0)) for s in snaps),
                "redis_mb": int(client.info("memory")["used_memory"]) / 2**20,
                "broker_log_mb": _log_mb(args.broker_log_dir, prefixes),
                "rate": sum(float(s.get("rate", 0)) for s in snaps),
                "join": max(int(s.get("learning", {}).get("join_size", 0)) for s in snaps),
                "load1": os.getloadavg()[0],
            }
            samples.append(sample)
            print(" ".join(f"{k}={v:,.1f}" for k, v in sample.items()), flush=True)
            if any(p.poll() is not None for p in workers.procs):
                raise SystemExit(f"a worker exited; logs in {log_dir}")
    finally:  # the publisher stops first: a record sent after the delete re-creates a topic
        stop.set()
        if producer is not None:
            producer.join(60)
        workers.stop()
        delete_topics(args.bootstrap, _run_topics(args.bootstrap, prefixes) or topics)
    report(args, samples, rate, load)
    return 0


def _slope(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` per minute (``t`` in minutes); 0 with under 2 points."""
    return float(np.polyfit(t, y, 1)[0]) if len(t) >= 2 else 0.0


def report(args: argparse.Namespace, samples: list[dict[str, float]], rate: float,
           load: str) -> None:
    t = np.asarray([s["t_s"] for s in samples]) / 60
    col = {key: np.asarray([s[key] for s in samples]) for key in samples[0]}
    rss, p99 = col["rss_mb"], col["p99_ms"]
    last = t >= t[-1] - LAST_MIN
    warm = t >= 1.0
    slope_last, slope_warm = _slope(t[last], rss[last]), _slope(t[warm], rss[warm])
    span = round(min(LAST_MIN, float(t[-1])), 1)
    settings = Settings()
    per_event, per_label = join_bytes_per_entry(settings.num_features)
    cap = settings.join_max_entries
    bound = (f"the feedback join holds at most `join_max_entries` = {cap:,} entries per worker "
             f"(measured {per_event:.0f} B per event row with {settings.num_features} "
             f"features, {per_label:.0f} B per waiting label: at most "
             f"{cap * max(per_event, per_label) / 2**20:.0f} MB); it held at most "
             f"{col['join'].max():,.0f} here")
    lines = [
        f"Worker RSS {rss.min():.0f}-{rss.max():.0f} MB; slope over the last "
        f"{span:g} minutes **{slope_last:+.2f} MB/min** "
        f"({slope_warm:+.2f} MB/min after the first minute).",
        f"Memory bound: {bound}.",
        f"p99 over the last {span:g} minutes: median "
        f"{np.median(p99[last]):.0f} ms, 90th percentile {np.percentile(p99[last], 90):.0f} ms, "
        f"max {p99[last].max():.0f} ms (whole run: max {p99.max():.0f} ms).",
        f"Open fds {col['fds'][warm].min():.0f}-{col['fds'][warm].max():.0f}, threads "
        f"{col['threads'][warm].min():.0f}-{col['threads'][warm].max():.0f} after the first "
        f"minute; lag median {np.median(col['lag'][warm]):,.0f} records; Redis "
        f"{col['redis_mb'].min():.1f}-{col['redis_mb'].max():.1f} MB; this run's topics "
        f"{col['broker_log_mb'][-1]:,.0f} MB on the broker at the end; machine load average "
        f"{col['load1'].min():.1f}-{col['load1'].max():.1f}.",
    ]
    print("\n".join(lines))
    if not args.write_docs:
        return
    _plot(t, col, rate, args.minutes)
    every = max(1, len(samples) // 20)
    rows = [[f"{s['t_s'] / 60:.1f}", f"{s['rss_mb']:.0f}", f"{s['fds']:.0f}",
             f"{s['threads']:.0f}", f"{s['lag']:.0f}", f"{s['p99_ms']:.0f}",
             f"{s['join']:.0f}", f"{s['redis_mb']:.1f}", f"{s['broker_log_mb']:.0f}",
             f"{s['load1']:.1f}"]
            for s in samples[::every]]
    body = (f"![soak plot](soak.png)\n\n2 workers (learning, `--sync-mode sync`) at "
            f"{rate:,.0f} events/s (half of the measured capacity) for {args.minutes:g} "
            f"minutes, sampled every {args.every_s:g} s (every {every}th sample shown):\n\n"
            + markdown_table(["min", "RSS MB (max)", "fds", "threads", "lag", "p99 ms",
                              "join entries", "Redis MB", "topics MB", "load"], rows)
            + "\n\n" + "\n\n".join(lines) + "\n\n" + docs_footer(load))
    write_docs_section("soak", body, DOC)


def _plot(t: np.ndarray, col: dict[str, np.ndarray], rate: float, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [("rss_mb", "worker RSS (MB, max of 2)"), ("p99_ms", "p99 latency (ms)"),
             ("lag", "consumer lag (records)"), ("join", "join entries held (max of 2)"),
             ("fds", "open fds (max)"), ("threads", "threads (max)"),
             ("redis_mb", "Redis used memory (MB)"), ("load1", "machine load average (1 min)")]
    fig, axes = plt.subplots(4, 2, figsize=(11, 11), sharex=True)
    for ax, (key, label) in zip(axes.flat, names, strict=True):
        ax.plot(t, col[key])
        ax.set_title(label)
        ax.set_ylim(0, max(1.0, float(col[key].max())) * 1.15)
    last = t >= t[-1] - LAST_MIN
    if last.sum() >= 2:  # the RSS fit the docs quote, over the last minutes
        fit = np.polyfit(t[last], col["rss_mb"][last], 1)
        axes.flat[0].plot(t[last], np.polyval(fit, t[last]), "r--",
                          label=f"last {round(min(LAST_MIN, float(t[-1])), 1):g} min: "
                          f"{fit[0]:+.2f} MB/min")
        axes.flat[0].legend(loc="lower right")
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    fig.suptitle(f"soak: 2 workers, learning + sync, {rate:,.0f} events/s, {minutes:g} min")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=80)


if __name__ == "__main__":
    raise SystemExit(main())
