"""Failover on real local clusters: a 3-master Redis Cluster and a 3-broker Kafka cluster.

Each test starts its cluster with ``deploy/local/services.sh`` in a state directory and on
ports of its own (never the shared services), kills nodes with SIGKILL while two workers serve
a paced stream, and checks what a user relies on: every event predicted, every key holding its
newest prediction, the workers never stopping. Run alone with ``pytest -m cluster -s`` (the
recovery times are printed). About 2.5 minutes for both on the 2-core dev machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from workers import Deployment, read_topic, wait_for

from streaminfer.connectors.admin import ensure_topics
from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.publish import publish_chunks
from streaminfer.connectors.redis_client import connect
from streaminfer.streams.cli.dev import SERVICES_SCRIPT

pytestmark = [pytest.mark.cluster, pytest.mark.services]

APP = "classifier"
RATE = 2_500  # events/s offered, paced
KEYS = 1_500  # entity keys; each gets ~RATE*duration/KEYS events, so "newest" matters
REDIS_PORT = int(os.environ.get("TEST_REDIS_CLUSTER_PORT", "17101"))
KAFKA_PORT = int(os.environ.get("TEST_KAFKA_CLUSTER_PORT", "29192"))


def _services(state: Path, *args: str) -> str:
    env = {**os.environ, "STREAMINFER_STATE": str(state),
           "STREAMINFER_REDIS_CLUSTER_PORT": str(REDIS_PORT),
           "STREAMINFER_KAFKA_CLUSTER_PORT": str(KAFKA_PORT)}
    env.pop("KAFKA_BOOTSTRAP", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.run(["bash", str(SERVICES_SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if proc.returncode not in (0, 3):
        pytest.fail(f"services.sh {' '.join(args)} exited {proc.returncode}:\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def cluster_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-state")


@pytest.fixture
def redis_cluster(cluster_state: Path) -> Iterator[str]:
    _services(cluster_state, "up", "--redis-cluster")
    url = ",".join(f"127.0.0.1:{REDIS_PORT + i}" for i in range(6))
    try:
        yield f"redis+cluster://{url}"
    finally:
        _services(cluster_state, "down", "--redis-cluster")


@pytest.fixture
def kafka_cluster(cluster_state: Path) -> Iterator[str]:
    _services(cluster_state, "up", "--brokers", "3")
    try:
        yield ",".join(f"127.0.0.1:{KAFKA_PORT + i}" for i in range(3))
    finally:
        _services(cluster_state, "down", "--brokers", "3")


def _events(run: str, count: int) -> list[dict[str, Any]]:
    feats = np.random.default_rng(0).normal(size=(count, 8)).astype(np.float32).tolist()
    base = int(time.time() * 1000)
    return [{"event_id": f"{run}-{i:06d}", "key": f"{run}-k{i % KEYS}", "ts": base + i,
             "features": f} for i, f in enumerate(feats)]


class Publisher(threading.Thread):
    """Publishes the events at RATE in the background (acks=all, idempotent)."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, events)
        self.failed: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        bootstrap, topic, events = self.args
        try:
            producer = make_producer({"bootstrap.servers": bootstrap})
            chunks = [events[i:i + 1000] for i in range(0, len(events), 1000)]
            self.failed = publish_chunks(producer, topic, RecordCodec("event"), chunks,
                                         key_field="key", rate=RATE, flush_timeout=300).failed
        except BaseException as exc:  # reported by the test
            self.error = exc


class Progress(threading.Thread):
    """Samples the workers' total of processed events (their metrics keys) 4 times a second."""

    def __init__(self, client: Any, procs: list[subprocess.Popen[bytes]]) -> None:
        super().__init__(daemon=True)
        self.client, self.procs = client, procs
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.worker_died: str | None = None

    def run(self) -> None:
        import socket

        host = socket.gethostname()
        while not self.stop.wait(0.25):
            total = 0
            for proc in self.procs:
                if proc.poll() is not None and self.worker_died is None:
                    self.worker_died = f"worker {proc.pid} exited with {proc.returncode}"
                try:
                    raw = self.client.get(f"metrics:{APP}:{host}-{proc.pid}")
                except Exception:  # the metrics key's node may be failing over: skip
                    raw = None
                total += json.loads(raw)["events"] if raw else 0
            if raw is not None:
                self.samples.append((time.monotonic(), total))

    def longest_stall(self, since: float, until: float | None = None) -> float:
        """Longest time after ``since`` during which the total did not grow."""
        last_t, last_v, worst, end = since, None, 0.0, since
        for t, v in list(self.samples):
            if t < since or (until is not None and t > until):
                continue
            end = t
            if last_v is None or v > last_v:
                worst = max(worst, t - last_t)
                last_t, last_v = t, v
        return max(worst, end - last_t)  # a stall still going on counts too

    def resumed_after(self, since: float) -> float | None:
        """Seconds from ``since`` until the total grew past its value at ``since``."""
        before = max((v for t, v in self.samples if t <= since), default=0)
        return next((t - since for t, v in self.samples if t > since and v > before), None)


def _start(dep: Deployment, client: Any, count: int = 2) -> list[subprocess.Popen[bytes]]:
    procs = [dep.start_worker() for _ in range(count)]
    dep.wait_ready(procs, client, timeout=180)
    return procs


def _newest_per_key(events: list[dict[str, Any]]) -> dict[str, str]:
    newest: dict[str, dict[str, Any]] = {}
    for e in events:
        cur = newest.get(e["key"])
        if cur is None or (e["ts"], e["event_id"]) >= (cur["ts"], cur["event_id"]):
            newest[e["key"]] = e
    return {k: e["event_id"] for k, e in newest.items()}


def _check_final_state(client: Any, events: list[dict[str, Any]]) -> None:
    expected = _newest_per_key(events)
    pipe = client.pipeline(transaction=False)
    keys = sorted(expected)
    for key in keys:
        pipe.hget(f"pred:{APP}:{key}", "event_id")
    stored = dict(zip(keys, [v.decode() if v else None for v in pipe.execute()], strict=True))
    wrong = {k: (stored[k], v) for k, v in expected.items() if stored[k] != v}
    assert not wrong, f"{len(wrong)} keys do not hold their newest prediction, e.g. " \
        f"{list(wrong.items())[:5]} (stored, expected)"


def _all_served(dep: Deployment, events: list[dict[str, Any]], timeout: float) -> None:
    want = {e["event_id"] for e in events}
    seen: set[str] = set()

    def done() -> bool:
        seen.update(r["event_id"] for r in read_topic(dep.bootstrap, dep.predictions_topic,
                                                      idle_s=1.0))
        return want <= seen

    wait_for(done, timeout, "every event in the predictions topic",
             lambda: f"missing {len(want - seen)} of {len(want)}\n{dep.log_tail()}")


def _master_with_most_keys(url: str) -> tuple[str, int, int]:
    """(node name, its keys, its pid) of the master holding the most keys."""
    client = connect(url)
    best = max(client.get_primaries(), key=lambda n: n.redis_connection.dbsize())
    info = best.redis_connection.info("server")
    return best.name, best.redis_connection.dbsize(), int(info["process_id"])


def test_redis_master_killed_mid_stream_replica_takes_over(
        services: Any, new_topic: Any, tmp_path: Path, redis_cluster: str) -> None:
    client = connect(redis_cluster)
    events_topic = new_topic(partitions=4, prefix="events")
    predictions = new_topic(partitions=4, prefix="predictions")
    dep = Deployment(services.bootstrap, redis_cluster, events_topic, predictions, tmp_path,
                     app=APP, partitions=4,
                     extra_env={"STREAMINFER_REDIS_WAIT_REPLICAS": "1"})
    try:
        procs = _start(dep, client)
        run = uuid.uuid4().hex[:8]
        events = _events(run, RATE * 16)
        progress = Progress(client, procs)
        progress.start()
        publisher = Publisher(services.bootstrap, events_topic, events)
        publisher.start()
        time.sleep(6)
        node, keys, pid = _master_with_most_keys(redis_cluster)
        replica_port = _replica_of(client, node)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        promoted = _wait_promoted(replica_port, timeout=60)
        publisher.join(120)
        assert publisher.error is None and publisher.failed == 0, publisher.error
        _all_served(dep, events, timeout=180)
        progress.stop.set()
        progress.join()
        assert progress.worker_died is None, progress.worker_died
        assert all(p.poll() is None for p in procs), "a worker stopped"
        _check_final_state(connect(redis_cluster), events)
        resumed = progress.resumed_after(killed_at)
        print(f"\nredis failover: killed master {node} (pid {pid}, {keys} keys) "
              f"{len(events)} events at {RATE} ev/s; replica 127.0.0.1:{replica_port} "
              f"promoted after {promoted:.1f}s; workers' progress resumed after "
              f"{_s(resumed)}; longest stall after the kill "
              f"{progress.longest_stall(killed_at):.1f}s")
    finally:
        dep.stop_all()


def _replica_of(client: Any, master: str) -> int:
    """Port of ``master``'s replica, from ``CLUSTER NODES``."""
    port = master.rsplit(":", 1)[1]
    text = subprocess.run(["redis-cli", "-p", port, "cluster", "nodes"], capture_output=True,
                          text=True, check=True, timeout=10).stdout
    rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    master_id = next(f[0] for f in rows if f[1].split("@")[0] == master)
    for fields in rows:
        if fields[3] == master_id:
            return int(fields[1].split("@")[0].rsplit(":", 1)[1])
    raise AssertionError(f"no replica of {master} in\n{text}")


def _wait_promoted(port: int, timeout: float) -> float:
    import redis

    start, node = time.monotonic(), redis.Redis(port=port)
    while time.monotonic() - start < timeout:
        if node.execute_command("ROLE")[0] in (b"master", "master"):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"replica on {port} not promoted within {timeout}s")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s"


def _broker_pid(state: Path, node: int) -> int:
    return int((state / "kafka-cluster" / f"node{node}" / "kafka.pid").read_text().strip())


def test_kafka_brokers_killed_mid_stream_nothing_lost(
        services: Any, tmp_path: Path, kafka_cluster: str, cluster_state: Path) -> None:
    config = {"bootstrap.servers": kafka_cluster}
    run = uuid.uuid4().hex[:8]
    events_topic, predictions = f"events-{run}", f"predictions-{run}"
    for status in ensure_topics(config, {events_topic: 4, predictions: 4, f"{events_topic}.dlq":
                                         4, f"{events_topic}-feedback": 4},
                                replication=3, min_insync_replicas=2):
        assert status.created, status.describe()
    client = connect(services.redis_url)
    dep = Deployment(kafka_cluster, services.redis_url, events_topic, predictions, tmp_path,
                     app=APP, partitions=4,
                     extra_env={"STREAMINFER_TOPIC_REPLICATION_FACTOR": "3",
                                "STREAMINFER_TOPIC_MIN_INSYNC_REPLICAS": "2"})
    try:
        procs = _start(dep, client)
        events = _events(run, RATE * 24)
        progress = Progress(client, procs)
        progress.start()
        publisher = Publisher(kafka_cluster, events_topic, events)
        publisher.start()
        time.sleep(5)
        first_kill = time.monotonic()
        os.kill(_broker_pid(cluster_state, 2), signal.SIGKILL)
        time.sleep(10)
        stall_one = progress.longest_stall(first_kill, time.monotonic())
        second_kill = time.monotonic()
        os.kill(_broker_pid(cluster_state, 3), signal.SIGKILL)
        time.sleep(8)  # one broker of three: below min.insync.replicas, producers must wait
        waited = progress.longest_stall(second_kill, time.monotonic())
        restart = time.monotonic()
        _services(cluster_state, "up", "--brokers", "3")
        restarted = time.monotonic() - restart
        publisher.join(300)
        assert publisher.error is None and publisher.failed == 0, (publisher.error,
                                                                   publisher.failed)
        _all_served(dep, events, timeout=240)
        progress.stop.set()
        progress.join()
        assert progress.worker_died is None, progress.worker_died
        assert all(p.poll() is None for p in procs), "a worker stopped"
        _check_final_state(client, events)
        resumed = progress.resumed_after(restart)
        print(f"\nkafka failover: {len(events)} events at {RATE} ev/s, RF 3, min.insync 2; "
              f"one broker killed: longest stall {stall_one:.1f}s (goal < 15 s); second "
              f"killed: no progress for {waited:.1f}s of 8 (producers waiting); restart took "
              f"{restarted:.1f}s, progress resumed {_s(resumed)} after the restart began")
        assert stall_one < 15, f"stall after one broker loss {stall_one:.1f}s"
    finally:
        dep.stop_all()
        client.close()


def test_every_redis_user_works_on_the_cluster(redis_cluster: str) -> None:
    """Predictions, top-N, checkpoints, published parameters and the registry, on a
    3-master cluster, with the key layout of a single instance."""
    import torch

    from streaminfer.connectors.checkpoint_store import RedisCheckpointBlobs
    from streaminfer.connectors.params_publisher import ParamsPublisher, read_params
    from streaminfer.connectors.redis_sink import (
        PredictionRow,
        Recommendations,
        RedisPredictionSink,
        RedisRecommendationSink,
    )
    from streaminfer.connectors.registry_store import RedisRegistryBlobs

    client = connect(redis_cluster)
    sink = RedisPredictionSink(client, "ct")
    rows = [PredictionRow(event_id=f"e{i}", key=f"k{i}", score=0.5, model_version="v1",
                          event_ts=1000 + i, processed_ts=2000, model_name="m")
            for i in range(3000)]
    assert sink.write(rows).applied == 3000
    owners = {client.get_node_from_key(f"pred:ct:k{i}").name for i in range(3000)}
    assert len(owners) == 3  # the rows really went to all three masters
    assert sink.write(rows[:5]).applied == 5  # a replay is an idempotent overwrite
    older = PredictionRow(event_id="e0", key="k7", score=0.1, model_version="v0",
                          event_ts=1, processed_ts=2000, model_name="m")
    assert sink.write([older]).stale == 1
    assert client.hget("pred:ct:k7", "event_id") == b"e7"

    # Move 2,000 slots (with their keys) to another master behind the sink's back: its next
    # batch meets the old owner's refusal, re-reads the map and lands every row.
    primaries = client.get_primaries()
    ids = {n.name: n.redis_connection.execute_command("CLUSTER MYID") for n in primaries}
    src, dst = primaries[0].name, primaries[1].name
    subprocess.run(["redis-cli", "--cluster", "reshard", src, "--cluster-from",
                    _text(ids[src]), "--cluster-to", _text(ids[dst]), "--cluster-slots", "2000",
                    "--cluster-yes"], check=True, capture_output=True, timeout=120)
    newer = [PredictionRow(event_id=f"n{i}", key=f"k{i}", score=0.7, model_version="v2",
                           event_ts=9000 + i, processed_ts=9999, model_name="m")
             for i in range(3000)]
    retries = sink.router.topology_retries
    assert sink.write(newer).applied == 3000
    assert sink.router.topology_retries > retries  # it did meet the move
    fresh = connect(redis_cluster)
    assert all(fresh.hget(f"pred:ct:k{i}", "event_id") == f"n{i}".encode()
               for i in range(0, 3000, 7))

    recs = RedisRecommendationSink(client)
    top = Recommendations.from_lists([f"u{i}" for i in range(200)], [("a", "b")] * 200,
                                     [(1.0, 2.0)] * 200, ["x"] * 200, [10] * 200, 11, "v1")
    assert recs.write(top).applied == 200
    stale = Recommendations.from_lists(["u3"], [("z",)], [(9.0,)], ["w"], [10], 11)
    assert recs.write(stale).stale == 1
    assert client.zrange("recs:u3", 0, -1) == [b"a", b"b"]
    assert client.hget("recs_meta:u3", "event_id") == b"x"

    blobs = RedisCheckpointBlobs(client)
    for n in range(4):
        blobs.put("ct", f"c{n}", n, b"state%d" % n, "{}")
    assert [i for i, _, _ in blobs.index("ct")] == ["c3", "c2", "c1", "c0"]
    assert blobs.drop_oldest("ct", keep=2) == ["c0", "c1"]
    assert not blobs.exists("ckpt:ct:c0") and blobs.get("ct", "ckpt:ct:c3")[0] == b"state3"

    class _Version:
        updates = 3

        def __str__(self) -> str:
            return "v1+u3"

    class _Model:
        name, version = "m", _Version()

        def state_dict(self) -> dict[str, torch.Tensor]:
            return {"w": torch.ones(3)}

        def config(self) -> dict[str, Any]:
            return {}

    ParamsPublisher(client, "ct").publish(_Model())  # type: ignore[arg-type]
    assert read_params(client, "ct")["w"].tolist() == [1.0, 1.0, 1.0]

    registry = RedisRegistryBlobs(client)
    assert registry.create("mdl", 1, b"w1", "{}")
    assert not registry.create("mdl", 1, b"other", "{}")  # versions are immutable
    registry.write_labels("mdl", '{"active": 1}')
    assert registry.names() == ["mdl"] and registry.versions("mdl") == [1]
    assert registry.read("mdl", 1) == (b"w1", "{}")
