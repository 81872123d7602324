"""Run real ``streaminfer worker`` processes for end-to-end tests, and read their output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from confluent_kafka import Consumer, TopicPartition

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms


@dataclass
class Deployment:
    """One app deployment under test: its topics, group, env and worker processes."""

    bootstrap: str
    redis_url: str
    events_topic: str
    predictions_topic: str
    log_dir: Path
    app: str = "classifier"
    partitions: int = 4
    group: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def feedback_topic(self) -> str:
        return f"{self.events_topic}-feedback"

    def env(self) -> dict[str, str]:
        topic_var = "STREAMINFER_EVENTS_TOPIC" if self.app == "classifier" else (
            "STREAMINFER_RATINGS_TOPIC")
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "STREAMINFER_APP": self.app,
            topic_var: self.events_topic,
            "STREAMINFER_PREDICTIONS_TOPIC": self.predictions_topic,
            "STREAMINFER_FEEDBACK_TOPIC": self.feedback_topic,
            "STREAMINFER_CONSUMER_GROUP": self.group,
            "PYTHONUNBUFFERED": "1",
            "STREAMINFER_METRICS_PORT": "0",  # several workers on one host
            **self.extra_env,
        }

    def start_worker(self, *args: str, global_args: tuple[str, ...] = ()
                     ) -> subprocess.Popen[bytes]:
        """``streaminfer [GLOBAL_ARGS] worker [ARGS]``, its output in ``log_dir``."""
        log = (self.log_dir / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streaminfer", *global_args, "worker", *args],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def wait_ready(self, procs: list[subprocess.Popen[bytes]], client: redis.Redis,
                   timeout: float = 120) -> None:
        """Until ``procs`` share the input partitions between them, each reading some."""
        wait_for(lambda: workers_ready(client, self.app, procs, self.partitions), timeout,
                 f"{len(procs)} {self.app} worker(s) to share {self.partitions} partitions",
                 self.log_tail)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop_all(self) -> None:
        stop_processes(self.procs)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live one (they finish and commit), then kill what did not exit in 30 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def deployment(services: Any, new_topic: Callable[..., str], tmp_path: Path,
               partitions: int = 4, app: str = "classifier") -> Iterator[Deployment]:
    events = new_topic(partitions=partitions, prefix="events")
    predictions = new_topic(partitions=partitions, prefix="predictions")
    new_topic(partitions=1, prefix="unused")  # warm the admin client
    dep = Deployment(services.bootstrap, services.redis_url, events, predictions, tmp_path,
                     app=app, partitions=partitions)
    try:
        yield dep
    finally:
        dep.stop_all()


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{on_timeout()}") from None
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")


def workers_ready(client: redis.Redis, app: str, procs: list[subprocess.Popen[bytes]],
                  partitions: int) -> bool:
    """Every worker reads some partitions and together they read each one exactly once, as
    their metrics say; fails fast if one exited.

    A worker's metrics are up to a second old, so right after a rebalance an old owner may still
    list partitions it gave away: the overlap keeps this false until the group has settled."""
    for proc in procs:
        if proc.poll() is not None:
            raise AssertionError(f"worker {proc.pid} exited with {proc.returncode}")
    owned: list[int] = []
    for proc in procs:
        raw = client.get(worker_metrics_key(app, proc.pid))
        mine = json.loads(raw).get("partitions") if raw else None
        if not mine:
            return False
        owned += mine
    return sorted(owned) == list(range(partitions))


def worker_metrics_key(app: str, pid: int) -> str:
    """Where a local worker publishes its metrics (its id is ``{hostname}-{pid}``)."""
    return f"metrics:{app}:{socket.gethostname()}-{pid}"


def read_topic(bootstrap: str, topic: str, schema: str = "prediction",
               idle_s: float = 3.0) -> list[dict[str, Any]]:
    """Every record currently in ``topic``, decoded, read until ``idle_s`` of silence."""
    codec = RecordCodec(schema) if schema else None
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})  # exactly-once's readers
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out: list[dict[str, Any]] = []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        for msg in consumer.consume(2000, 0.5):
            if msg.error():
                continue
            last = time.monotonic()
            record = codec.decode(msg.value()) if codec else {}
            out.append({**record, "_key": msg.key(), "_ts": msg.timestamp()[1],
                        "_headers": dict(msg.headers() or []), "_value": msg.value()})
    consumer.close()
    return out


def wait_all_served(dep: Deployment, count: int, timeout: float, what: str
                    ) -> dict[str, dict[str, Any]]:
    """Read the predictions topic until it holds ``count`` distinct event ids (newest record
    per id wins); fails with the workers' log tails after ``timeout``."""
    served: dict[str, dict[str, Any]] = {}

    def enough() -> bool:
        served.update({r["event_id"]: r for r in read_topic(
            dep.bootstrap, dep.predictions_topic, idle_s=1.0)})
        return len(served) >= count

    wait_for(enough, timeout, what, dep.log_tail)
    return served


def redis_predictions(client: redis.Redis, app: str, keys: list[str]) -> dict[str, dict[str, str]]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(f"pred:{app}:{key}")
    return {key: {k.decode(): v.decode() for k, v in h.items()}
            for key, h in zip(keys, pipe.execute(), strict=True) if h}


def publish_interleaved(bootstrap: str, events_topic: str, feedback_topic: str,
                        x: np.ndarray, y: np.ndarray, run: str, rate: float,
                        keys: int = 1) -> list[str]:
    """Event i, then its label, at ``rate`` pairs per second, over ``keys`` entity keys
    (one key = one partition = the order is exactly the publish order)."""
    producer = make_producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for topic in (events_topic, feedback_topic):  # metadata first: the first events would
        producer.list_topics(topic, timeout=10)  # otherwise wait for it and leave in a burst
    events, feedback = RecordCodec("event"), RecordCodec("feedback")
    ids = [f"{run}-{i}" for i in range(len(y))]
    start = time.perf_counter()
    for i, (features, label) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        ts, key = now_ms(), f"{run}-k{i % keys}"
        producer.produce(events_topic, events.encode(
            {"event_id": ids[i], "key": key, "ts": ts, "features": features}), key.encode(),
            timestamp=ts)
        producer.produce(feedback_topic, feedback.encode(
            {"event_id": ids[i], "key": key, "label": label, "ts": ts}), key.encode(),
            timestamp=ts)
        producer.poll(0)
        ahead = (i + 1) / rate - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    assert producer.flush(30) == 0
    return ids
