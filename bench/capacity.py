"""Capacity model: CPU per event of each stage, of the broker and of Redis, checked against
real worker processes.

On a 2-core machine more processes cannot show scaling (Kafka and Redis share the cores), so
this measures what an event costs instead, and predicts from it:

1. **Stages**: the classifier lane ``bench/sync.py`` runs (learning on, sync async, one label
   per event), in a thread of this process, with each stage wrapped in a per-thread CPU clock:
   decode, score, outputs, join, learn, sync, Redis (packing + the write call), topic
   (encoding + handing to librdkafka), and the rest of the loop; the other threads
   (librdkafka's fetch, produce and sync transport; torch's pool) are the process CPU the
   Python threads do not account for. The broker's and redis-server's CPU come from
   ``/proc/<pid>/stat`` over the same window.
2. **Processes**: 1, then 2 ``streaminfer worker --app classifier`` processes at defaults drain
   events and labels published once every worker owns partitions, in alternating rounds;
   their CPU, the servers' and the whole machine's (``/proc/stat``, so the other users of
   this shared machine are known) are sampled over the middle 90% of the events, read from
   the predictions topic's end offsets.

Predicted events/s = min(N / Python CPU per event, cores left to us / CPU per event of worker +
broker + Redis). "Cores left" = this machine's cores minus what other processes used during
the run (measured), since the machine is shared.

Usage: ``python bench/capacity.py --write-docs`` (Redis: start your own, e.g. on 6393, so its
CPU is only this run's).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import (
    CallClocks,
    TopicEnd,
    cpu_seconds,
    create_topics,
    delete_topics,
    docs_footer,
    machine_busy_s,
    markdown_table,
    publish_synthetic,
    redis_server_pid,
    start_run,
    unique_name,
    write_docs_section,
)
from sync import Config, LaneResult, publish_feedback, run_lane

from streaminfer.streams.learning import FeedbackLearner
from streaminfer.streams.pipeline import HotPath

KAFKA_PID_FILE = Path.home() / ".cache" / "streaminfer" / "state" / "kafka" / "kafka.pid"
STAGES = ("decode", "score", "outputs", "join", "learn", "sync", "redis", "topic")


@dataclass
class Servers:
    """The broker and redis-server this run talks to, by PID, for their CPU clocks."""

    broker: int
    redis: int

    @classmethod
    def find(cls, redis_url: str, broker_pid: int | None) -> Servers:
        pid = broker_pid or int(KAFKA_PID_FILE.read_text().split()[0])
        return cls(pid, redis_server_pid(redis_url))

    def sample(self) -> dict[str, float]:
        return {"broker": cpu_seconds(self.broker), "redis": cpu_seconds(self.redis),
                "machine": machine_busy_s(), "wall": time.monotonic()}

    def broker_background(self, seconds: float = 3.0) -> float:
        """Cores the broker uses while this run sends it nothing: other users of a shared
        broker, its own housekeeping. Subtracted, per second, from what runs measure."""
        before = self.sample()
        time.sleep(seconds)
        after = self.sample()
        return (after["broker"] - before["broker"]) / (after["wall"] - before["wall"])


# -- part 1: stages ---------------------------------------------------------------------------


class StageClocks(CallClocks):
    """Per-thread CPU seconds spent inside each wrapped call, by stage."""

    def install(self, hot: HotPath, learner: FeedbackLearner | None) -> None:
        self.wrap(hot.handler, "decode", "decode")
        self.wrap(hot.handler, "score", "score")
        self.wrap(hot.handler, "outputs", "outputs")
        self.wrap(hot.sinks.redis, "pack_columns", "redis")
        self.wrap(hot.sinks.redis, "write_packed", "redis")
        if hot.sinks.topic is not None:
            self.wrap(hot.sinks.topic, "encode", "topic")
            self.wrap(hot.sinks.topic, "send", "topic")
        if learner is None:
            return
        # join = the learner's whole process() minus what is clocked inside it
        self.wrap(learner, "process", "learner")
        assert learner.labels is not None
        self.wrap(learner.labels, "decode", "decode_feedback")
        self.wrap(learner.model, "learn", "learn")
        if learner.hooks.progressive is not None:
            self.wrap(learner.hooks.progressive, "update", "learn_metrics")
        if learner.hooks.sync is not None:
            self.wrap(learner.hooks.sync, "after_learn", "sync_in_learn")
            self.wrap(learner.hooks.sync, "poll", "sync_poll")

    def stages(self) -> dict[str, float]:
        c = self.seconds
        inside = c["decode_feedback"] + c["learn"] + c["learn_metrics"] + c["sync_in_learn"]
        return {"decode": c["decode"] + c["decode_feedback"], "score": c["score"],
                "outputs": c["outputs"], "join": max(0.0, c["learner"] - inside),
                "learn": c["learn"] + c["learn_metrics"],
                "sync": c["sync_in_learn"] + c["sync_poll"], "redis": c["redis"],
                "topic": c["topic"]}


@dataclass
class StageRun:
    lane: LaneResult
    stages: dict[str, float]  # CPU seconds over the whole run
    servers: dict[str, float]  # CPU seconds over the whole run
    others_cores: float

    def us(self, seconds: float) -> float:
        return seconds / self.lane.total_events * 1e6

    @property
    def python_us(self) -> float:
        """The lane's and the writer's threads: what one process's GIL serialises."""
        return self.lane.us_per_event(self.lane.lane_cpu_s + self.lane.writer_cpu_s)

    @property
    def process_us(self) -> float:
        return self.lane.us_per_event(self.lane.process_cpu_s)


def run_stages(args: argparse.Namespace, servers: Servers) -> StageRun:
    topics = {name: unique_name(f"bench-cap-{name}") for name in ("events", "feedback",
                                                                   "predictions")}
    create_topics(args.bootstrap, list(topics.values()), args.partitions)
    sync_topics: list[str] = []
    clocks = StageClocks()
    try:
        _prefill(args, topics["events"], topics["feedback"])
        background = servers.broker_background()
        before, cpu0 = servers.sample(), time.process_time()
        lane = run_lane(args, topics, Config("stages", True, "async"), sync_topics,
                        clocks.install)
        after, ours = servers.sample(), time.process_time() - cpu0
    finally:
        delete_topics(args.bootstrap, [*topics.values(), *sync_topics])
    used = {k: after[k] - before[k] for k in after}
    broker = max(0.0, used["broker"] - background * used["wall"])
    others = (used["machine"] - broker - used["redis"] - ours) / used["wall"]
    return StageRun(lane, clocks.stages(), {"broker": used["broker"], "broker_net": broker,
                                            "redis": used["redis"]}, max(0.0, others))


def _prefill(args: argparse.Namespace, events: str, feedback: str) -> None:
    data = {"seed": 1, "num_features": args.num_features, "keys": args.keys}
    publish_synthetic(args.bootstrap, events, args.count, **data)
    publish_feedback(args.bootstrap, feedback, args.count, **data)


# -- part 2: worker processes -----------------------------------------------------------------


@dataclass
class ProcessRun:
    workers: int
    events: int = 0
    seconds: float = 0.0
    worker_cpu: float = 0.0
    broker_cpu: float = 0.0
    redis_cpu: float = 0.0
    machine_cpu: float = 0.0
    broker_raw_cpu: float = 0.0  # before subtracting the broker's background
    batch_avg: float = 0.0
    note: str = ""
    per_worker: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Events per second, each with its label (``events`` counts events + labels)."""
        return self.events / 2 / self.seconds if self.seconds else 0.0

    def us(self, cpu: float) -> float:
        return cpu / self.events * 2e6 if self.events else 0.0

    @property
    def others_cores(self) -> float:
        ours = self.worker_cpu + self.broker_cpu + self.redis_cpu
        return max(0.0, (self.machine_cpu - ours) / self.seconds) if self.seconds else 0.0


def run_processes(args: argparse.Namespace, servers: Servers, n: int, log_dir: Path
                  ) -> ProcessRun:
    """``n`` workers over fresh, pre-filled topics; the window opens once every worker owns
    partitions and has scored something, and closes when all events are scored."""
    tag = unique_name("bench-cap")
    names = {"events": f"{tag}-events", "feedback": f"{tag}-feedback",
             "predictions": f"{tag}-predictions"}
    create_topics(args.bootstrap, list(names.values()), args.partitions)
    client = redis.Redis.from_url(args.redis_url)
    env = {**os.environ, "KAFKA_BOOTSTRAP": args.bootstrap, "REDIS_URL": args.redis_url,
           "STREAMINFER_APP": "classifier", "STREAMINFER_EVENTS_TOPIC": names["events"],
           "STREAMINFER_FEEDBACK_TOPIC": names["feedback"],
           "STREAMINFER_PREDICTIONS_TOPIC": names["predictions"],
           "STREAMINFER_CONSUMER_GROUP": tag, "STREAMINFER_METRICS_PORT": "0"}
    procs: list[subprocess.Popen[bytes]] = []
    result = ProcessRun(n)
    try:
        for i in range(n):
            log = (log_dir / f"{tag}-{i}.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "streaminfer", "worker"],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        keys = [f"metrics:classifier:{socket.gethostname()}-{p.pid}" for p in procs]

        def snapshots() -> list[dict[str, Any]]:
            return [json.loads(raw) if (raw := client.get(k)) else {} for k in keys]

        # publish only once the group is settled: a rebalance mid-run restores the join
        # table from its changelog, which is not the steady state this measures
        deadline = time.monotonic() + args.phase_seconds
        while len({p for s in snapshots() for p in s.get("partitions") or []}) < args.partitions:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{n} workers did not own every partition; see {log_dir}")
            time.sleep(0.2)
        background = servers.broker_background()
        # The workers drain while the topics fill (a fill before they start would make the
        # second worker's join a rebalance mid-run); the filling thread's CPU counts among
        # "other users' cores", so the prediction allows for it.
        filling = threading.Thread(target=_prefill, args=(args, names["events"],
                                                          names["feedback"]))
        filling.start()
        # progress: the predictions topic's end offsets (one record per event), read at any
        # moment (the workers' metrics come once a second, and a run lasts a few); the window
        # is the middle 90% of the events, past start-up and before the first worker is done
        written = TopicEnd(args.bootstrap, names["predictions"], args.partitions)
        start: tuple[dict[str, float], float, list[int], int] | None = None
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            done = written()
            if start is None and done >= 0.05 * args.count:
                start = (servers.sample(), sum(cpu_seconds(p.pid) for p in procs),
                         [_progress(s) for s in snapshots()], done)
            if start is not None and done >= 0.95 * args.count:
                end = servers.sample()
                wall = end["wall"] - start[0]["wall"]
                snaps = snapshots()
                counts = [_progress(s) for s in snaps]
                result = ProcessRun(
                    n, 2 * (done - start[3]), wall,
                    sum(cpu_seconds(p.pid) for p in procs) - start[1],
                    max(0.0, end["broker"] - start[0]["broker"] - background * wall),
                    end["redis"] - start[0]["redis"],
                    end["machine"] - start[0]["machine"],
                    end["broker"] - start[0]["broker"],
                    sum(float(s.get("batch_avg") or 0) for s in snaps) / n,
                    per_worker=[c - s for c, s in zip(counts, start[2], strict=True)])
                break
            time.sleep(0.02)
        else:
            result.note = "did not finish; see " + str(log_dir)
        written.close()
        filling.join()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        delete_topics(args.bootstrap, _group_topics(args.bootstrap, tag))
    return result


def _progress(snapshot: dict[str, Any]) -> int:
    """Records done: events scored plus labels learned (each event has one label)."""
    return int(snapshot.get("events", 0)) + int((snapshot.get("learning") or {}).get(
        "learned", 0))


def _group_topics(bootstrap: str, tag: str) -> list[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    return [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """CPU microseconds per event of a worker process, the broker and Redis, and the Python
    share of the worker's (its GIL: one process cannot go faster than 1 / that)."""

    worker_us: float
    broker_us: float
    redis_us: float
    python_us: float

    @property
    def total_us(self) -> float:
        return self.worker_us + self.broker_us + self.redis_us

    def predict(self, workers: int, cores: float) -> float:
        if not self.python_us or not self.total_us:
            return 0.0
        return min(workers * 1e6 / self.python_us, cores * 1e6 / self.total_us)

    def cores_needed(self, rate: float) -> dict[str, float]:
        return {"worker": rate * self.worker_us / 1e6, "broker": rate * self.broker_us / 1e6,
                "redis": rate * self.redis_us / 1e6}


def _stage_table(run: StageRun) -> str:
    lane = run.lane
    python = lane.lane_cpu_s + lane.writer_cpu_s
    rows = [[s, f"{run.us(run.stages[s]):.1f}"] for s in STAGES]
    rest = python * lane.total_events / max(1, lane.events) - sum(run.stages.values())
    kafka = (lane.process_cpu_s - python) * lane.total_events / max(1, lane.events)
    rows += [["loop, batching, offsets (rest of the Python threads)", f"{run.us(rest):.1f}"],
             ["other threads (librdkafka: fetch, produce, sync transport; torch's pool)",
              f"{run.us(kafka):.1f}"],
             ["**worker process**", f"**{run.process_us:.1f}**"],
             ["broker (`/proc`), raw: an upper bound on a shared broker",
              f"{run.us(run.servers['broker']):.1f}"],
             ["broker minus its background", f"{run.us(run.servers['broker_net']):.1f}"],
             ["redis-server (`/proc`)", f"{run.us(run.servers['redis']):.1f}"]]
    return markdown_table(["stage", "CPU us/event"], rows)


def _process_table(runs: dict[int, list[ProcessRun]], stage_costs: Costs, cores: int
                   ) -> tuple[str, Costs]:
    best = {n: max(rs, key=lambda r: r.rate) for n, rs in runs.items()}
    one = best[1]
    # the servers' costs come from the stage run (a longer window); the broker's raw CPU is
    # an upper bound on a shared broker. The Python share of a worker is the stage run's.
    measured = Costs(one.us(one.worker_cpu), stage_costs.broker_us, stage_costs.redis_us,
                     one.us(one.worker_cpu) * stage_costs.python_us / stage_costs.worker_us)
    rows = []
    for n, r in best.items():
        left = max(0.1, cores - r.others_cores)
        rows.append([f"{n} process{'es' if n > 1 else ''}", f"{r.rate:,.0f}",
                     f"{r.us(r.worker_cpu):.1f}",
                     f"{r.us(r.broker_raw_cpu):.1f}", f"{r.us(r.broker_cpu):.1f}",
                     f"{r.batch_avg:.0f}",
                     f"{r.us(r.redis_cpu):.1f}", f"{r.others_cores:.2f}", f"{left:.2f}",
                     f"{stage_costs.predict(n, left):,.0f}",
                     f"{stage_costs.predict(n, left) / r.rate:.2f}" if r.rate else "",
                     f"{measured.predict(n, left):,.0f}",
                     f"{measured.predict(n, left) / r.rate:.2f}" if r.rate else "",
                     ", ".join(f"{x.rate:,.0f}" for x in runs[n]), r.note])
    table = markdown_table(
        ["run", "events/s", "worker CPU us/event",
         "broker us/event, raw", "broker minus its background", "avg batch",
         "Redis us/event",
         "other users' cores", "cores left to us", "predicted from stages",
         "stages / measured", "predicted from 1-process costs", "1-process / measured",
         "events/s, each round", "note"], rows)
    return table, measured


def _model_table(costs: Costs) -> str:
    per_worker = 1e6 / costs.python_us if costs.python_us > 0 else 0.0
    rows = []
    for n in (1, 2, 4, 8, 16):
        need = costs.cores_needed(n * per_worker)
        rows.append([n, f"{n * per_worker:,.0f}", f"{need['worker']:.1f}",
                     f"{need['broker']:.1f}", f"{need['redis']:.2f}",
                     f"{sum(need.values()):.1f}"])
    return markdown_table(["workers", "events/s (each at its Python limit)", "worker cores",
                           "broker cores", "Redis cores", "total cores"], rows)


def _rates(costs: Costs) -> str:
    def per_core(us: float) -> str:
        return f"{1e6 / us:,.0f}" if us > 0 else "(not measurable)"

    return (f"worker {per_core(costs.worker_us)} events/s per core (one process at most "
            f"{per_core(costs.python_us)}: its Python threads share a GIL), broker "
            f"{per_core(costs.broker_us)}, Redis {per_core(costs.redis_us)}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CPU per event of each stage, the broker and Redis; a capacity model "
                    "checked against 1 and 2 worker processes.",
        epilog="Example: python bench/capacity.py --redis-url redis://127.0.0.1:6393/12 "
               "--write-docs")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--broker-pid", type=int,
                        help=f"The broker's PID [default: read from {KAFKA_PID_FILE}].")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13",
                        help="Redis for the predictions; its server's CPU is measured, so "
                             "use one nobody else is loading.")
    parser.add_argument("--count", type=int, default=60_000,
                        help="Events pre-filled per run (and as many labels).")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--num-features", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2,
                        help="Alternating rounds of the 1- and 2-process runs.")
    parser.add_argument("--phase-seconds", type=float, default=120.0,
                        help="Time cap per run.")
    parser.add_argument("--write-docs", action="store_true",
                        help="Rewrite the 'capacity' section of docs/benchmarks.md.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    load = start_run()
    cores = os.cpu_count() or 1
    servers = Servers.find(args.redis_url, args.broker_pid)
    stages = run_stages(args, servers)
    stage_costs = Costs(stages.process_us, stages.us(stages.servers["broker"]),
                        stages.us(stages.servers["redis"]), stages.python_us)
    stage_table = _stage_table(stages)
    print(f"\nstages, one lane in this process ({stages.lane.per_s(stages.lane.events):,.0f} "
          f"events/s):\n{stage_table}\n", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    runs: dict[int, list[ProcessRun]] = {1: [], 2: []}
    for i in range(args.rounds):
        for n in runs:
            runs[n].append(run_processes(args, servers, n, log_dir))
            r = runs[n][-1]
            print(f"round {i + 1}: {n} process(es) {r.rate:,.0f} events/s, worker "
                  f"{r.us(r.worker_cpu):.1f} us/ev, broker {r.us(r.broker_cpu):.1f}, redis "
                  f"{r.us(r.redis_cpu):.1f}, others {r.others_cores:.2f} cores {r.note}",
                  flush=True)
    process_table, measured = _process_table(runs, stage_costs, cores)
    model = _model_table(measured)
    print(f"\n{process_table}\n\nfrom the stages: {_rates(stage_costs)}\nfrom the 1-process "
          f"run: {_rates(measured)}\n\n{model}")
    if args.write_docs:
        write_docs_section("capacity", _docs(args, stages, stage_table, process_table,
                                             stage_costs, measured, model, load))
        print("wrote the 'capacity' section of docs/benchmarks.md")
    return 0


def _docs(args: argparse.Namespace, stages: StageRun, stage_table: str, process_table: str,
          stage_costs: Costs, measured: Costs, model: str, load: str) -> str:
    lane = stages.lane
    return f"""## Capacity: CPU per event (`bench/capacity.py`)

Stages: the classifier lane of `bench/sync.py` (learning on, a label for every event, sync
`async`, join in memory) drains {args.count:,} pre-filled events and their labels in a thread
of the bench process ({lane.per_s(lane.events):,.0f} events/s); each stage's calls are wrapped
in a per-thread CPU clock, the servers' CPU comes from `/proc/<pid>/stat` over the same window
(the broker's minus its background, measured for 3 s before; other users of this machine used
{stages.others_cores:.2f} cores meanwhile).

{stage_table}

Processes: 1 and 2 `streaminfer worker --app classifier` processes at defaults drain
{args.count:,} events and their labels, published once every worker owns partitions (a
thread of the bench fills the topics while the workers drain them), {args.rounds} alternating
rounds, best of each. Progress is the predictions topic's end offsets, polled every 20 ms;
the window is the middle 90% of the events. "Cores left to us" is {os.cpu_count()} minus
what other processes of this shared machine used during the run (`/proc/stat`). Predicted
events/s = min(N x 1e6 / Python us per event, cores left x 1e6 / (worker + broker + Redis us
per event)), once from the stage costs above and once from the 1-process run's worker costs
(with the stage run's broker and Redis costs: the broker is shared, so its raw CPU per event
is an upper bound, and the background measured for 3 s before each run and subtracted is too
noisy to go by; a worker's Python share is the stage run's).

{process_table}

From the stages: {_rates(stage_costs)}. From the 1-process run: {_rates(measured)}.

Cores that N workers need, each at its Python limit, from the 1-process costs:

{model}

{docs_footer(load)}"""


if __name__ == "__main__":
    sys.exit(main())
