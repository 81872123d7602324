"""What parameter sync costs: in isolation per mode, and inside the classifier hot path.

Two parts, one run, side by side (the machine is small and shared: compare ratios):

* **Isolated** (``models.sync`` alone): two workers in one process learn from their halves of
  a synthetic stream and sync through a fresh topic; the same loop with ``mode="off"`` is the
  baseline. Rounds (or deltas) applied per second, bytes per publish, ms per 1k updates.
* **Pipeline**: pre-filled, co-partitioned events and feedback topics (every event's label,
  same key), drained by the classifier hot path (``streams.worker.build_lane``) in a thread of
  this process, for a fresh consumer group each time, in six configurations:
  (1) learning off (no learner, reads the events topic only: half the records);
  (2) learning on (``FeedbackLearner`` joining feedback to events in a ``MemoryJoinStore``),
  sync off; (3) learning on, ``sync_mode="async"``; (4) learning on, ``sync_mode="sync"``.
  (3) and (4) run a single worker, which still publishes its deltas (and, in ``sync``, closes
  its own rounds) and polls the sync topic: the overhead one worker pays, relative to (2).
  (5) and (6) are (3) with a learner that drops the labels as they arrive, or once decoded:
  the bound that reading a second topic sets on (3), whatever the join and learning cost.
  Rates count what came after the first batch over first -> last batch (start-up excluded).
  The run ends with issue 11's goal, (3) >= 0.8x (1) in events/s, as ``met`` or ``missed``.

Usage: ``python bench/sync.py --write-docs`` (about 3 minutes; ``--skip-isolated`` or
``--skip-pipeline`` to run one part).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from _common import (
    CallClocks,
    Goal,
    create_topics,
    delete_topics,
    docs_footer,
    machine_busy_s,
    markdown_table,
    publish_synthetic,
    start_run,
    unique_name,
    write_docs_section,
)
from confluent_kafka import Message

from streaminfer.connectors.avro import RecordCodec, make_codec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.publish import PublishReport, publish_chunks
from streaminfer.connectors.sources import SyntheticClassifier, SyntheticRatings
from streaminfer.models import Interactions, Model, create_model
from streaminfer.streams.app import load_app
from streaminfer.streams.assignment import GroupAssignment
from streaminfer.streams.batch import Batch, Rejected
from streaminfer.streams.decode import RecordDecoder
from streaminfer.streams.join import JoinState, MemoryJoinStore
from streaminfer.streams.learner_setup import Restored, build_hooks, step_rule
from streaminfer.streams.learning import FeedbackLearner
from streaminfer.streams.metrics import PipelineMetrics
from streaminfer.streams.pipeline import HotPath
from streaminfer.streams.settings import Settings, load_settings
from streaminfer.streams.wiring import create_kafka_sync
from streaminfer.streams.worker import Worker, WorkerOptions, build_handler, build_lane

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


def _warm_up(syncs: list[Any], seconds: float = 1.0) -> None:
    """Poll idle syncs a while, so the sync consumers' start-up (metadata, first fetch) is not
    counted as sync cost: short runs would otherwise close no round at all."""
    if not any(s.stats().get("mode") != "off" for s in syncs):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sync in syncs:
            sync.poll()
        time.sleep(0.01)


def run_isolated(app: str, mode: str, bootstrap: str, updates: int, every: int,
                 every_ms: float) -> dict:
    """One mode of the isolated part: two workers in this process, synced through Kafka."""
    config = {"bootstrap.servers": bootstrap}
    topic = f"bench-sync-{uuid.uuid4().hex[:8]}"
    models = [_model(app) for _ in range(2)]
    data = [_batches(app, updates, w)[:updates] for w in range(2)]
    steps = min(len(d) for d in data)  # recommender halves split by user parity: may differ
    syncs = [
        create_kafka_sync(mode, m, kafka_config=config, topic=topic, worker_id=f"b{w}", shards=4,
                          every_updates=every, every_ms=every_ms, round_timeout_ms=2000)
        for w, m in enumerate(models)
    ]
    _warm_up(syncs)
    before = syncs[0].stats()
    learn_s = sync_s = 0.0
    start = time.perf_counter()
    for step in range(steps):
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
    for key in ("rounds_closed", "applied", "published", "bytes_out", "rows_out"):
        if key in stats:
            stats[key] -= before[key]
    for s in syncs:
        s.close()
    if mode != "off":
        delete_topics(bootstrap, [topic])  # waits: a dropped AdminClient deletes nothing
    total_updates = 2 * steps
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


# -- pipeline part ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One hot-path configuration of the pipeline part."""

    name: str
    learn: bool
    sync_mode: str = "off"
    #: the learner stops after this stage ("read": labels dropped as they arrive; "decode":
    #: labels decoded, then dropped), to bound what (3) can reach; None: the whole learner
    upto: str | None = None


CONFIGS = (
    Config("(1) learning off", False),
    Config("(2) learning on, sync off", True),
    Config("(3) learning on, sync async", True, "async"),
    Config("(4) learning on, sync sync", True, "sync"),
    Config("(5) = (3), labels read, then dropped", True, "async", "read"),
    Config("(6) = (3), labels read and decoded, then dropped", True, "async", "decode"),
)


@dataclass
class _CountingLearner(FeedbackLearner):
    """``FeedbackLearner`` that also counts the feedback records it was handed, and may stop
    after reading or decoding them (``upto``)."""

    feedback_seen: int = 0
    upto: str | None = None

    def process(self, batch: Batch, scores: np.ndarray, feedback: list[Message],
                rejected: list[Rejected]) -> None:
        self.feedback_seen += len(feedback)
        if self.upto == "read":
            return
        if self.upto == "decode":
            if feedback and self.labels is not None:
                self.labels.decode(feedback)
            return
        super().process(batch, scores, feedback, rejected)


@dataclass(frozen=True)
class _Sample:
    wall: float
    lane_cpu: float  # the hot-path thread: decode, score, join, learn, sync
    writer_cpu: float  # the batch-writer thread: Redis, predictions topic, offsets
    process_cpu: float  # everything, librdkafka's threads (consumer, producers, sync) included
    events: int
    feedback: int
    steps: int
    machine_busy: float  # CPU seconds of the whole machine (broker and Redis included)
    walls: dict[str, float]  # wall seconds so far in each part of a batch (``_wall_clocks``)


class _Clock:
    """``on_batch`` hook (runs on the writer thread): counters and clocks at the first and
    the last batch. The hot-path thread's CPU clock is read through its pthread id."""

    def __init__(self, hot: HotPath, learner: _CountingLearner | None,
                 walls: CallClocks) -> None:
        self.hot, self.learner, self.walls = hot, learner, walls
        self.lane: threading.Thread | None = None
        self.first: _Sample | None = None
        self.last: _Sample | None = None

    def __call__(self, _batch: object) -> None:
        assert self.lane is not None and self.lane.ident is not None
        lane_clock = time.pthread_getcpuclockid(self.lane.ident)
        learner = self.learner
        sample = _Sample(time.perf_counter(), time.clock_gettime(lane_clock), time.thread_time(),
                         time.process_time(), self.hot.metrics.events,
                         learner.feedback_seen if learner else 0, learner.steps if learner else 0,
                         machine_busy_s(), dict(self.walls.seconds))
        if self.first is None:
            self.first = sample
        self.last = sample


@dataclass
class LaneResult:
    """One configuration's figures over the first -> last batch window."""

    name: str
    seconds: float
    events: int
    feedback: int
    steps: int
    lane_cpu_s: float
    writer_cpu_s: float
    process_cpu_s: float
    note: str = ""
    total_events: int = 0  # the whole run's, for the sync's whole-run counters
    machine_cores: float | None = None
    #: wall seconds in each part of a batch (``_wall_clocks``) from the first batch to the last
    wall_s: dict[str, float] = field(default_factory=dict)
    sync: dict[str, Any] = field(default_factory=dict)
    learning: dict[str, Any] = field(default_factory=dict)

    def per_s(self, count: int) -> float:
        return count / self.seconds if self.seconds > 0 else 0.0

    def us_per_event(self, cpu_s: float) -> float:
        return cpu_s / self.events * 1e6 if self.events else 0.0

    def wall_us(self, part: str) -> float:
        """Wall us per event in ``part`` (``_wall_clocks``), first -> last batch."""
        return self.us_per_event(self.wall_s.get(part, 0.0))

    @property
    def event_us(self) -> float:
        """Wall us between events at this run's rate: the time each thread had per event."""
        return 1e6 / self.per_s(self.events) if self.events else 0.0

    @property
    def sync_s(self) -> float:
        """Time the lane spent inside the sync (publishing deltas, polling, applying)."""
        return float(self.sync.get("publish_s", 0.0)) + float(self.sync.get("poll_s", 0.0))


def publish_feedback(bootstrap: str, topic: str, count: int, *, seed: int, num_features: int,
                     keys: int) -> PublishReport:
    """Every label of the events ``publish_synthetic`` sends with the same arguments, keyed
    like its event, so it lands in the same partition number (co-partitioned)."""
    codec = RecordCodec("feedback", "single-object", topic=topic)
    gen = SyntheticClassifier(seed=seed, num_features=num_features, keys=keys)
    chunks = (
        [{"event_id": e["event_id"], "key": e["key"], "label": y, "ts": None}
         for e, y in zip(events, labels.tolist(), strict=True)]
        for events, labels in gen.chunks(count, 5000)
    )
    return publish_chunks(make_producer({"bootstrap.servers": bootstrap}), topic, codec, chunks,
                          key_field="key")


def _lane_settings(args: argparse.Namespace, topics: dict[str, str], config: Config
                   ) -> Settings:
    return load_settings(
        bootstrap_servers=args.bootstrap, redis_url=args.redis_url, app="classifier",
        events_topic=topics["events"], feedback_topic=topics["feedback"],
        predictions_topic=topics["predictions"], consumer_group=unique_name("bench-sync"),
        num_features=args.num_features, device="cpu", learn=config.learn,
        sync_mode=config.sync_mode, publish_params_every_s=0)


def _build(args: argparse.Namespace, topics: dict[str, str], config: Config,
           sync_topics: list[str]) -> tuple[HotPath, _CountingLearner | None]:
    """The lane a worker would run (``streams.worker``), with a memory join store and no
    checkpoints or params publishing, reading through its own consumer group. A sync gets a
    fresh topic (appended to ``sync_topics``): an earlier run's deltas would be replayed."""
    settings = _lane_settings(args, topics, config)
    options = WorkerOptions(worker_id=f"bench-{uuid.uuid4().hex[:6]}")
    app = load_app(settings.app, settings)
    model = Worker(app, settings, options).fresh_model()
    handler = build_handler(app, settings, model)
    learner: _CountingLearner | None = None
    subscribed = [settings.events_topic]
    if config.learn:
        sync = None
        if config.sync_mode != "off":
            sync_topics.append(unique_name(f"bench-sync-{config.sync_mode}"))
            sync = create_kafka_sync(
                config.sync_mode, model, kafka_config=settings.kafka_config(),
                topic=sync_topics[-1], worker_id=options.worker_id,
                every_updates=settings.sync_every_updates, every_ms=settings.sync_every_ms,
                round_timeout_ms=settings.sync_round_timeout_ms, shards=settings.sync_shards)
        hooks = build_hooks(settings, app, model, Restored(), options.worker_id, dict, sync,
                            None)
        join = JoinState(MemoryJoinStore(), int(settings.join_window_s * 1000))
        learning = app.learning
        assert learning is not None
        labels = RecordDecoder(make_codec("feedback", "json", None, settings.feedback_topic),
                               key=learning.join_on, event_id=learning.join_on,
                               event_time=learning.event_time, fields=[learning.label])
        learner = _CountingLearner(model, hooks=hooks, feedback_topic=settings.feedback_topic,
                                   join=join, labels=labels, learning=learning,
                                   upto=config.upto, **step_rule(settings, learning))
        subscribed.append(settings.feedback_topic)
    hot = build_lane(app, settings, handler, PipelineMetrics(window=1000), threading.Lock(),
                     GroupAssignment(subscribed), unique_name("bench-sync-group"), learner)
    return hot, learner


def _wall_clocks(hot: HotPath) -> CallClocks:
    """Wall time in each part of a batch, on both of the lane's threads: the thread that is
    busy for about all of the time between events is the one that bounds the rate."""
    walls = CallClocks(time.perf_counter)
    walls.wrap(hot.batcher, "next_batch", "fetching")  # hot path: the next micro-batch
    walls.wrap(hot, "prepare", "preparing")  # hot path: decode, score, learn, stage writes
    walls.wrap(hot, "_submit", "handing over")  # hot path: waiting for the writer to take it
    walls.wrap(hot, "_write", "writing")  # writer thread: Redis, predictions topic, offsets
    return walls


def run_lane(args: argparse.Namespace, topics: dict[str, str], config: Config,
             sync_topics: list[str],
             instrument: Callable[[HotPath, FeedbackLearner | None], None] | None = None
             ) -> LaneResult:
    """Drain the pre-filled topics with one configuration; stop once all was read.
    ``instrument`` may wrap the lane's parts before it starts (``bench/capacity.py``)."""
    hot, learner = _build(args, topics, config, sync_topics)
    walls = _wall_clocks(hot)
    if instrument is not None:
        instrument(hot, learner)
    clock = _Clock(hot, learner, walls)
    hot.on_batch = clock
    stop = threading.Event()
    thread = threading.Thread(target=hot.run, args=(stop,), name="bench-lane", daemon=True)
    clock.lane = thread
    thread.start()
    deadline = time.monotonic() + args.phase_seconds
    wanted_feedback = args.count if learner is not None else 0
    while hot.metrics.events < args.count or (
            learner is not None and learner.feedback_seen < wanted_feedback):
        if time.monotonic() > deadline or not thread.is_alive():
            break
        time.sleep(0.02)
    time.sleep(0.1)  # the last batch's write and on_batch
    stop.set()
    thread.join(60)
    first, last = clock.first, clock.last
    if first is None or last is None:
        raise RuntimeError(f"{config.name}: no batch was processed")
    note = ""
    if hot.metrics.events < args.count or (learner and learner.feedback_seen < wanted_feedback):
        note = (f"stopped at {hot.metrics.events:,} events, "
                f"{learner.feedback_seen if learner else 0:,} feedback")
    if hot.metrics.rejected:
        note += f" {hot.metrics.rejected} rejected"
    result = LaneResult(
        config.name, last.wall - first.wall, last.events - first.events,
        last.feedback - first.feedback, last.steps - first.steps, last.lane_cpu - first.lane_cpu,
        last.writer_cpu - first.writer_cpu, last.process_cpu - first.process_cpu, note.strip(),
        hot.metrics.events,
        machine_cores=(last.machine_busy - first.machine_busy) / (last.wall - first.wall)
        if last.wall > first.wall else None,
        wall_s={k: v - first.walls.get(k, 0.0) for k, v in last.walls.items()})
    if learner is not None:
        snap = learner.snapshot()
        result.sync = snap.pop("sync", {})
        result.learning = snap
    return result


def _clear_redis(url: str) -> None:
    client = redis.Redis.from_url(url)
    keys: list[bytes] = []
    for key in client.scan_iter("pred:classifier:*", count=5000):
        keys.append(key)
        if len(keys) >= 5000:
            client.unlink(*keys)
            keys = []
    if keys:
        client.unlink(*keys)


Rounds = dict[str, list[LaneResult]]


def run_pipeline(args: argparse.Namespace) -> Rounds:
    """Pre-fill, then every configuration ``--rounds`` times, alternating."""
    topics = {name: unique_name(f"bench-sync-{name}")
              for name in ("events", "feedback", "predictions")}
    create_topics(args.bootstrap, list(topics.values()), args.partitions)
    sync_topics: list[str] = []
    _clear_redis(args.redis_url)
    rounds: Rounds = {c.name: [] for c in CONFIGS}
    try:
        data = {"seed": 1, "num_features": args.num_features, "keys": args.keys}
        sent = publish_synthetic(args.bootstrap, topics["events"], args.count, **data).sent
        sent_fb = publish_feedback(args.bootstrap, topics["feedback"], args.count, **data).sent
        print(f"pre-filled {sent:,} events + {sent_fb:,} feedback, {args.partitions} "
              "partitions each", flush=True)
        for i in range(args.rounds):
            for config in CONFIGS:
                r = run_lane(args, topics, config, sync_topics)
                rounds[config.name].append(r)
                print(f"round {i + 1} {_lane_line(r)}", flush=True)
    finally:
        delete_topics(args.bootstrap, [*topics.values(), *sync_topics])
        _clear_redis(args.redis_url)
    return rounds


def _lane_line(r: LaneResult) -> str:
    note = f"  [{r.note}]" if r.note else ""
    return (f"{r.name:<30} {r.per_s(r.events):>8,.0f} ev/s  {r.per_s(r.feedback):>8,.0f} fb/s"
            f"  {r.per_s(r.steps):>6,.0f} steps/s  lane CPU {r.us_per_event(r.lane_cpu_s):6.1f}"
            f" us/ev  writer {r.us_per_event(r.writer_cpu_s):5.1f}  process "
            f"{r.us_per_event(r.process_cpu_s):6.1f}  machine {_cores(r)} cores busy\n"
            f"        wall us/event {r.event_us:.1f}: hot path fetching "
            f"{r.wall_us('fetching'):.1f}, preparing "
            f"{r.wall_us('preparing'):.1f}, waiting for the writer {r.wall_us('handing over'):.1f};"
            f" writer writing {r.wall_us('writing'):.1f}{note}")


def _cores(r: LaneResult) -> str:
    return "?" if r.machine_cores is None else f"{r.machine_cores:.2f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else ""


def pipeline_goal(rounds: Rounds) -> Goal:
    """Issue 11 goal 1: learning on (a label for every event, sync async, the default) serves
    at least 0.8x the events/s of learning off; best round of each."""
    best = {name: max(r.per_s(r.events) for r in rs) for name, rs in rounds.items()}
    return Goal("classifier events/s, learning on (sync async) vs learning off",
                best[CONFIGS[2].name] / best[CONFIGS[0].name] if best[CONFIGS[0].name] else 0.0,
                0.8)


def bound_line(rounds: Rounds) -> str:
    """What (3) could reach if the join and the learning were free: (5) and (6) vs (1)."""
    best = {name: max(r.per_s(r.events) for r in rs) for name, rs in rounds.items()}
    off = best[CONFIGS[0].name] or 1.0
    read_only = best[CONFIGS[4].name] or 1.0
    return (f"bounds: labels only read (5) {read_only / off:.2f}x of (1), read and "
            f"decoded (6) {best[CONFIGS[5].name] / off:.2f}x; (3) runs at "
            f"{best[CONFIGS[2].name] / read_only:.2f}x of (5)")


def cpu_line(rounds: Rounds) -> str:
    """The same comparison by process CPU per event (median over rounds), which a shared
    host's speed moves far less than events/s: what the goal would read on a quiet host."""
    cpu = {name: float(np.median([r.us_per_event(r.process_cpu_s) for r in rs]))
           for name, rs in rounds.items()}
    off, on = cpu[CONFIGS[0].name], cpu[CONFIGS[2].name]
    return (f"by process CPU per event (median of rounds): learning off {off:.1f} us, on "
            f"(sync async) {on:.1f} us: {off / on:.2f}x")


def _wall_table(rounds: Rounds) -> str:
    """Best round of each: how much of the time between events each of the lane's threads
    was busy, and how busy the whole machine was (broker and Redis included)."""
    rows = []
    for rs in rounds.values():
        r = max(rs, key=lambda x: x.per_s(x.events))
        gap = r.event_us or 1.0
        hot = r.wall_us("fetching") + r.wall_us("preparing")
        writing = r.wall_us("writing")
        rows.append([r.name, f"{r.per_s(r.events):,.0f}", f"{r.event_us:.1f}",
                     f"{r.wall_us('fetching'):.1f}", f"{r.wall_us('preparing'):.1f}",
                     f"{r.wall_us('handing over'):.1f}", f"{hot / gap:.0%}",
                     f"{writing:.1f}", f"{writing / gap:.0%}", _cores(r),
                     "hot path" if hot >= writing else "writer"])
    return markdown_table(
        ["run", "events/s", "wall us between events", "hot path fetching, us/event",
         "hot path preparing, us/event", "hot path waiting for the writer, us/event",
         "hot path busy (fetching + preparing)", "writer writing, us/event", "writer busy",
         "machine cores busy", "rate set by"], rows)


def _pipeline_tables(rounds: Rounds) -> tuple[str, str]:
    """The best round (highest events/s) of each configuration; every round's hot-path CPU
    per event is listed too, to show the run-to-run spread."""
    results = [max(rs, key=lambda r: r.per_s(r.events)) for rs in rounds.values()]
    off, base = results[0], results[1]
    rows = []
    for r, all_rounds in zip(results, rounds.values(), strict=True):
        learned, waited = r.learning.get("learned"), r.learning.get("waited")
        rows.append([
            r.name, f"{r.per_s(r.events):,.0f}", f"{r.per_s(r.feedback):,.0f}",
            f"{r.per_s(r.steps):,.0f}", f"{r.us_per_event(r.lane_cpu_s):.1f}",
            f"{r.us_per_event(r.writer_cpu_s):.1f}", f"{r.us_per_event(r.process_cpu_s):.1f}",
            _ratio(r.per_s(r.events), off.per_s(off.events)),
            _ratio(r.per_s(r.events), base.per_s(base.events)),
            _ratio(r.us_per_event(r.lane_cpu_s), base.us_per_event(base.lane_cpu_s)),
            ", ".join(f"{x.us_per_event(x.lane_cpu_s):.0f}" for x in all_rounds),
            "" if learned is None else f"{learned:,}",
            "" if waited is None else f"{waited:,}", r.note])
    throughput = markdown_table(
        ["run", "events/s", "feedback/s", "learn steps/s", "hot-path thread CPU us/event",
         "writer thread CPU us/event", "process CPU us/event", "events/s vs (1)",
         "events/s vs (2)", "hot-path CPU vs (2)", "hot-path CPU us/event, each round",
         "labels joined and learned", "labels that waited for their event", "note"], rows)
    sync_rows = []
    base_cpu = base.us_per_event(base.lane_cpu_s) or 1.0
    for r in results[2:4]:
        s = r.sync
        published = int(s.get("published", 0))
        applied = int(s.get("rounds_closed", s.get("applied", 0)))
        per_1k_steps = 1e6 / max(1, r.learning.get("steps", 0))  # seconds -> ms per 1k steps
        sync_rows.append([
            r.name, f"{r.us_per_event(r.lane_cpu_s) - base.us_per_event(base.lane_cpu_s):+.1f}",
            f"{r.us_per_event(r.process_cpu_s) - base.us_per_event(base.process_cpu_s):+.1f}",
            f"{r.sync_s / r.total_events * 1e6:.1f}" if r.total_events else "",
            f"{r.sync_s / r.total_events * 1e6 / base_cpu:.1%}" if r.total_events else "",
            f"{per_1k_steps * float(s.get('publish_s', 0.0)):.0f}",
            f"{per_1k_steps * float(s.get('poll_s', 0.0)):.0f}",
            f"{published:,}", f"{applied:,}",
            f"{int(s['bytes_out'] / published):,}" if published else ""])
    overhead = markdown_table(
        ["run", "hot-path CPU us/event vs (2)", "process CPU us/event vs (2)",
         "in-sync wall us/event", "in-sync vs (2) hot-path CPU", "publish ms per 1k learn steps",
         "poll ms per 1k learn steps", "deltas published",
         "rounds closed / deltas applied", "bytes per publish"], sync_rows)
    return throughput, overhead


# -- isolated part: reporting ----------------------------------------------------------------


def _isolated_table(rows: list[dict[str, Any]]) -> str:
    def show(value: Any, fmt: str = "{}") -> str:
        return "" if value is None else fmt.format(value)

    return markdown_table(
        ["app", "mode", "updates", "learn ms per 1k", "sync ms per 1k",
         "rounds (sync) / deltas applied (async) per s", "bytes per publish",
         "staleness ms (async)", "round s (sync)"],
        [[r["app"], r["mode"], f"{r['updates']:,}", r["learn_ms_per_1k"], r["sync_ms_per_1k"],
          show(r["rounds_or_deltas_applied_per_s"]), show(r["bytes_out_per_publish"], "{:,}"),
          show(r["staleness_ms_mean"], "{:.0f}"), show(r["round_s_mean"], "{:.2f}")]
         for r in rows])


def _docs(args: argparse.Namespace, isolated: list[dict[str, Any]],
          pipeline: Rounds, load: str) -> str:
    parts = ["## Parameter sync (`bench/sync.py`)"]
    if pipeline:
        throughput, overhead = _pipeline_tables(pipeline)
        goal = (f"{pipeline_goal(pipeline).line()}\n{cpu_line(pipeline)}\n"
                f"{bound_line(pipeline)}")
        walls = _wall_table(pipeline)
        d = load_settings()
        learning = load_app("classifier", d).learning
        assert learning is not None
        parts.append(f"""### Inside the classifier hot path

Pre-filled {args.partitions}-partition events and feedback topics: {args.count:,} events
({args.num_features} features, {args.keys:,} keys) and each one's label with the same key
(co-partitioned). Each configuration runs the lane `streams.worker.build_lane` builds, in a thread
of the bench process, for a fresh consumer group of `GroupAssignment` (events, plus feedback
when learning), until everything was read; best of {args.rounds} alternating round(s) by
events/s.
(1) has no learner and reads the events topic only, half the records of (2)-(6). (2)-(4) run
`FeedbackLearner` (join in a `MemoryJoinStore`,
the app's adaptive steps (`learn_batch_size` {learning.batch_size}, at most {learning.max_steps}
steps per micro-batch, one step from {learning.one_step_labels:,} labels on:
[learning.md](learning.md#how-many-labels-per-step)), progressive metrics; no checkpoints, no params
publishing) with `sync_mode` off, async and sync and the
default sync settings (a delta every {d.sync_every_updates} steps or {d.sync_every_ms:.0f} ms,
{d.sync_shards} shards). (3) and (4) are a single
worker: it publishes its deltas, polls the sync topic and, in `sync`, closes its own rounds, so
the difference to (2) is what sync costs one worker before any peer adds traffic. (5) and (6)
are (3) with a learner that drops the labels as they arrive, or right after decoding them:
what reading (and decoding) a second topic costs the broker, librdkafka, the batcher and the
decoder, so they bound what (3) can reach here whatever the join and the optimiser cost.
Both topics are read from the start at once, as by a worker catching up, and the label topic's
smaller records often come first: a label that waits for its event (counted) gets a join record
of its own before it is matched, which a live stream, where each label follows its event,
mostly skips.
Rates count
what came after the first batch, over first -> last batch. CPU per event: the hot-path thread
(decode, score, join, learn, sync), the batch-writer thread (Redis, predictions topic) and the
whole process (librdkafka's threads included), divided by events.

{throughput}

```
{goal}
```

What bounds each run: the lane's two threads work on consecutive batches at once (the writer
holds one batch, the hot path prepares the next), so the rate is set by whichever is busy for
about all of the time between events. Wall time per event (waits for the GIL, the cores and
the servers included), first -> last batch: the hot path fetching the next micro-batch from
librdkafka's queue, preparing it (`prepare`: decode, score, join, learn, stage the writes) and
handing it to the writer (waiting while the writer still holds the one before); the writer
writing (`_write`: Redis and the predictions topic in parallel, then the offsets). `machine
cores busy` is every process on the machine, from `/proc/stat`, over the same window.

{walls}

Sync overhead relative to (2). The in-sync columns are the sync's own counters
(`publish_s + poll_s`: building and sending deltas, polling and applying), i.e. its direct cost
in the lane, also as a share of (2)'s hot-path CPU per event; the whole-run differences to (2)
also carry this shared machine's run-to-run noise (see each round's hot-path CPU above).
One worker applies no peer deltas in `async`; in `sync` it closes a round per delta.

{overhead}""")
    if isolated:
        parts.append(f"""### `models.sync` alone

Two workers in one process learn from their halves of a synthetic stream ({args.updates:,}
learn steps of 64 rows each per worker), publishing a delta every {args.every} updates or
{args.every_ms:.0f} ms through a fresh 4-shard topic; `off` is the same loop without sync.

{_isolated_table(isolated)}""")
    parts.append(docs_footer(load))
    return "\n\n".join(parts)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sync cost: models.sync alone, and in the hot path (learning off/on, "
                    "sync off/async/sync).",
        epilog="Example: python bench/sync.py --write-docs")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--updates", type=int, default=500,
                        help="Isolated part: learn steps per worker.")
    parser.add_argument("--every", type=int, default=20, help="Isolated part: updates per delta.")
    parser.add_argument("--every-ms", type=float, default=200.0,
                        help="Isolated part: ms per delta.")
    parser.add_argument("--count", type=int, default=100_000,
                        help="Pipeline part: events pre-filled (and as many labels).")
    parser.add_argument("--partitions", type=int, default=4, help="Partitions of each topic.")
    parser.add_argument("--keys", type=int, default=100_000, help="Distinct entity keys.")
    parser.add_argument("--num-features", type=int, default=8, help="Feature vector length.")
    parser.add_argument("--rounds", type=int, default=2,
                        help="Alternating rounds of (1)-(6); the best of each counts.")
    parser.add_argument("--phase-seconds", type=float, default=60.0,
                        help="Time cap per configuration.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13",
                        help="Redis database for the pred:* keys (cleared of them after).")
    parser.add_argument("--skip-isolated", action="store_true", help="Pipeline part only.")
    parser.add_argument("--skip-pipeline", action="store_true", help="Isolated part only.")
    parser.add_argument("--write-docs", action="store_true",
                        help="Rewrite the 'sync' section of docs/benchmarks.md.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    load = start_run()
    started = time.perf_counter()
    pipeline: Rounds = {} if args.skip_pipeline else run_pipeline(args)
    isolated: list[dict[str, Any]] = []
    if not args.skip_isolated:
        for app in ("classifier", "recommender"):
            for mode in ("off", "async", "sync"):
                isolated.append(run_isolated(app, mode, args.bootstrap, args.updates, args.every,
                                             args.every_ms))
                print(json.dumps(isolated[-1]), flush=True)
    if pipeline:
        throughput, overhead = _pipeline_tables(pipeline)
        print(f"\nbest round of each:\n{throughput}\n\n{overhead}\n\n{_wall_table(pipeline)}\n\n"
              f"{pipeline_goal(pipeline).line()}\n{cpu_line(pipeline)}\n{bound_line(pipeline)}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.write_docs:
        write_docs_section("sync", _docs(args, isolated, pipeline, load))
        print("wrote the 'sync' section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
