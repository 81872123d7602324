"""What every fault test shares: its own Redis, a paced labelled stream, two learning workers,
and the end-of-test accounting (events in, predictions out, duplicates, dead letters, recovery).

A fault-free run's final Redis state is known from the input alone: for each key, the hash of
its newest ``(event_ts, event_id)`` (the guard keeps exactly that, whatever the order or the
replays). ``Outcome.check`` compares the workers' final hashes with it, field by field.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from servers import redis_answers
from workers import Deployment, read_topic, redis_predictions, wait_for

from streaminfer.connectors.admin import ensure_topics
from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms

#: where each test's figures are appended (JSON lines), for docs/reliability.md
REPORT = os.environ.get("STREAMINFER_FAULTS_REPORT")
CHAOS_APP = "chaos_app:app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own (stopped and started by the test). A stop saves an
    RDB snapshot first, so a restart comes back with the data, as a real restart would."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", "dump.rdb",
             *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, 20, f"redis on port {self.port}")

    def answers(self) -> bool:
        return redis_answers(f"redis://127.0.0.1:{self.port}/0", timeout=1.0)

    def stop(self) -> None:
        if self.proc is None:
            return
        client = redis.Redis(port=self.port, socket_timeout=10)
        with contextlib.suppress(redis.RedisError, OSError):
            client.shutdown(save=True)
        self.proc.wait(20)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@dataclass
class Stream:
    """Events (each with its label right after it) published at ``rate`` per second over
    ``keys`` keys, on a thread; remembers each event's key, time and partition."""

    bootstrap: str
    events_topic: str
    feedback_topic: str
    count: int
    rate: float
    keys: int = 200
    partitions: int = 4
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    sent: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (key, ts)
    partition: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    started: float = 0.0
    _thread: threading.Thread | None = None

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self._publish, daemon=True)
        self.started = time.time()
        self._thread.start()
        return self

    def join(self, timeout: float = 300) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not finish"
        assert not self.failed, self.failed[:3]

    def _publish(self) -> None:
        producer = make_producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                                  "message.timeout.ms": 300_000})
        events, labels = RecordCodec("event"), RecordCodec("feedback")
        rng = np.random.default_rng(abs(hash(self.run)) % 2**32)
        x = rng.normal(size=(self.count, 8)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.float32)

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self.failed.append(str(err))

        start = time.perf_counter()
        for i in range(self.count):
            eid, key, ts = f"{self.run}-{i}", f"{self.run}-k{i % self.keys}", now_ms()
            part = self.partition[key] = (i % self.keys) % self.partitions  # co-partitioned
            self.sent[eid] = (key, ts)
            producer.produce(self.events_topic, events.encode(
                {"event_id": eid, "key": key, "ts": ts, "features": x[i].tolist()}),
                key.encode(), partition=part, timestamp=ts, on_delivery=delivered)
            producer.produce(self.feedback_topic, labels.encode(
                {"event_id": eid, "key": key, "label": float(y[i]), "ts": ts}), key.encode(),
                partition=part, timestamp=ts, on_delivery=delivered)
            producer.poll(0)
            ahead = (i + 1) / self.rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
        if producer.flush(300) != 0:
            self.failed.append("events still unacknowledged after 300 s")

    def expected(self, excluded: set[str] = frozenset()) -> dict[str, tuple[int, str]]:  # type: ignore[assignment]
        """Per key, the newest ``(event_ts, event_id)``: the fault-free final state."""
        newest: dict[str, tuple[int, str]] = {}
        for eid, (key, ts) in self.sent.items():
            if eid in excluded:
                continue
            if (ts, eid) > newest.get(key, (-1, "")):
                newest[key] = (ts, eid)
        return newest


class Cluster:
    """Two (or more) classifier workers, learning with async sync, on fresh topics."""

    def __init__(self, bootstrap: str, redis_url: str, log_dir: Path, *,
                 partitions: int = 4, env: dict[str, str] | None = None,
                 app: str = CHAOS_APP) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:10]
        self.dep = Deployment(bootstrap, redis_url, f"fev-{tag}", f"fpred-{tag}", log_dir,
                              partitions=partitions)
        ensure_topics({"bootstrap.servers": bootstrap},
                      {self.dep.events_topic: partitions, self.dep.predictions_topic: partitions,
                       self.dep.feedback_topic: partitions})
        self.chaos_file = log_dir / "chaos"
        self.dep.extra_env.update({
            "STREAMINFER_APP": app, "STREAMINFER_SYNC_MODE": "async",
            "STREAMINFER_LEARN": "true", "STREAMINFER_BATCH_MAX_RECORDS": "200",
            "STREAMINFER_TEST_CHAOS_FILE": str(self.chaos_file),
            "STREAMINFER_PUBLISH_PARAMS_EVERY_S": "5",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH")])),
            **(env or {})})
        self.dep.app = "classifier"  # the metrics key's app name (the chaos app's name too)
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def bootstrap(self) -> str:
        return self.dep.bootstrap

    def start(self, n: int = 2, client: redis.Redis | None = None) -> None:
        self.workers = [self.dep.start_worker() for _ in range(n)]
        assert client is not None
        self.dep.wait_ready(self.workers, client, timeout=180)

    def restart(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        new = self.dep.start_worker()
        self.workers[self.workers.index(proc)] = new
        return new

    def alive(self) -> bool:
        return all(w.poll() is None for w in self.workers)

    def stream(self, count: int, rate: float, keys: int = 200) -> Stream:
        return Stream(self.bootstrap, self.dep.events_topic, self.dep.feedback_topic, count,
                      rate, keys, self.dep.partitions).start()

    def chaos(self, command: str) -> None:
        self.chaos_file.write_text(command)

    def stop(self) -> None:
        self.dep.stop_all()


@dataclass
class Outcome:
    """The accounting printed (and asserted) at the end of every fault test."""

    fault: str
    events_in: int
    predictions_out: int
    distinct: int
    duplicates: int
    dead_letters: int
    recovery_s: float | None
    longest_gap_s: float
    workers_running: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        rec = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"FAULT {self.fault}: events in {self.events_in}, predictions out "
                f"{self.predictions_out}, distinct event_ids predicted {self.distinct}, "
                f"duplicates {self.duplicates}, DLQ records {self.dead_letters}, recovery "
                f"{rec} s, longest gap {self.longest_gap_s:.1f} s, workers running "
                f"{self.workers_running} {extra}").rstrip()

    def report(self) -> None:
        print(self.line())
        if REPORT:
            with open(REPORT, "a") as out:
                out.write(json.dumps(self.__dict__) + "\n")


def settle(cluster: Cluster, stream: Stream, client: redis.Redis, fault: str, *,
           fault_end: float | None, timeout: float = 180, dup_bound: int | None = None,
           allow_model_rejects: bool = False, extra: dict[str, Any] | None = None) -> Outcome:
    """Wait until every event of ``stream`` is predicted (or dead-lettered as a model failure
    when ``allow_model_rejects``), then check Redis against the fault-free state and print the
    figures. ``fault_end`` (epoch s): recovery = first prediction after it, per partition."""
    stream.join()
    ids = set(stream.sent)
    records: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []

    def done() -> bool:
        records[:] = [r for r in read_topic(cluster.bootstrap, cluster.dep.predictions_topic,
                                            idle_s=1.0) if r["event_id"] in ids]
        dead[:] = read_topic(cluster.bootstrap, cluster.dep.events_topic + ".dlq", schema="",
                             idle_s=0.5) if allow_model_rejects else []
        settled = {r["event_id"] for r in records} | _dead_ids(dead)
        return ids <= settled

    wait_for(done, timeout, f"{fault}: every event predicted", cluster.dep.log_tail)
    predicted = {r["event_id"] for r in records}
    rejected = _dead_ids(dead) - predicted
    expected = stream.expected(excluded=rejected)

    def redis_settled() -> bool:
        stored = redis_predictions(client, "classifier", sorted(expected))
        return all((int(stored.get(k, {}).get("event_ts", -1)), stored.get(k, {}).get(
            "event_id")) == want for k, want in expected.items())

    wait_for(redis_settled, 30, f"{fault}: Redis to hold each key's newest event",
             cluster.dep.log_tail)
    stored = redis_predictions(client, "classifier", sorted(expected))
    for key, (ts, eid) in expected.items():
        assert stored[key]["event_id"] == eid and int(stored[key]["event_ts"]) == ts, key
        assert stored[key]["model_name"] == "classifier"
        assert 0.0 <= float(stored[key]["score"]) <= 1.0
    counts = Counter(r["event_id"] for r in records)
    dead_all = read_topic(cluster.bootstrap, cluster.dep.events_topic + ".dlq", schema="",
                          idle_s=0.5)
    dead_all += read_topic(cluster.bootstrap, cluster.dep.feedback_topic + ".dlq", schema="",
                           idle_s=0.5)
    dead_all = [d for d in dead_all if _dead_ids([d]) & ids]  # this test's stream only
    recovery, gap = _recovery(records, stream, fault_end)
    outcome = Outcome(fault, len(ids), len(records), len(counts),
                      len(records) - len(counts), len(dead_all), recovery, gap,
                      cluster.alive(), extra or {})
    outcome.report()
    assert outcome.workers_running, cluster.dep.log_tail()
    if not allow_model_rejects:
        assert predicted == ids and not dead_all
    if dup_bound is not None:
        assert outcome.duplicates <= dup_bound, outcome.line()
    return outcome


def _dead_ids(dead: list[dict[str, Any]]) -> set[str]:
    out = set()
    for d in dead:
        for decode in (json.loads, RecordCodec("event").decode,
                       RecordCodec("feedback").decode):
            try:
                out.add(decode(d["_value"])["event_id"])
                break
            except Exception:
                continue
    return out


def _recovery(records: list[dict[str, Any]], stream: Stream, fault_end: float | None
              ) -> tuple[float | None, float]:
    """(seconds from ``fault_end`` to each partition's first prediction after it, the slowest;
    the longest time any partition went without a prediction while the stream ran)."""
    by_part: dict[int, list[int]] = {}
    for r in records:
        key = stream.sent[r["event_id"]][0]
        by_part.setdefault(stream.partition.get(key, -1), []).append(int(r["processed_ts"]))
    gap = 0.0
    recovery: float | None = None
    for part, stamps in sorted(by_part.items()):
        stamps.sort()
        gap = max(gap, max(np.diff(stamps), default=0) / 1000)
        print(f"  partition {part}: {len(stamps)} predictions, longest gap "
              f"{max(np.diff(stamps), default=0) / 1000:.1f} s")
        if fault_end is not None:
            after = [s for s in stamps if s >= fault_end * 1000]
            if after:
                first = (after[0] - fault_end * 1000) / 1000
                recovery = first if recovery is None else max(recovery, first)
    return recovery, gap


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def freeze(proc: subprocess.Popen[bytes], seconds: float) -> None:
    proc.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    proc.send_signal(signal.SIGCONT)


def kafka_tools() -> str | None:
    return shutil.which("kcat")
