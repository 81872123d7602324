"""The stream worker end to end, against the real broker and Redis, as a user runs it."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from workers import (
    deployment,
    read_topic,
    redis_predictions,
    wait_for,
)

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.publish import publish_chunks
from streaminfer.connectors.records import now_ms

pytestmark = pytest.mark.services
APP = "classifier"


def _events(run: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Events whose entity key is unique, so each has its own ``pred:`` hash to check."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(count, 8)).astype(np.float32).tolist()
    return [{"event_id": f"{run}-{i}", "key": f"{run}-{i}", "ts": None, "features": f}
            for i, f in enumerate(feats)]


def _publish(bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float = 0) -> None:
    producer = make_producer({"bootstrap.servers": bootstrap})
    chunks = [events[i:i + 2000] for i in range(0, len(events), 2000)]
    report = publish_chunks(producer, topic, RecordCodec("event"), chunks, key_field="key",
                            rate=rate)
    assert report.failed == 0, report.failure_examples


def _all_predicted(client: redis.Redis, events: list[dict[str, Any]]) -> bool:
    keys = [e["key"] for e in events]
    return len(redis_predictions(client, APP, keys)) == len(keys)


def test_every_event_predicted_once_with_two_workers(services: Any, new_topic: Any,
                                                     redis_client: redis.Redis,
                                                     tmp_path: Path) -> None:
    with deployment(services, new_topic, tmp_path, partitions=4) as dep:
        workers = [dep.start_worker(), dep.start_worker()]
        dep.wait_ready(workers, redis_client)
        run = uuid.uuid4().hex[:8]
        events = _events(run, 20_000)
        _publish(dep.bootstrap, dep.events_topic, events)
        wait_for(lambda: _all_predicted(redis_client, events), 120,
                 "a prediction in Redis for every event", dep.log_tail)
        dep.stop_all()
        assert all(w.returncode == 0 for w in workers), dep.log_tail()

        stored = redis_predictions(redis_client, APP, [e["key"] for e in events])
        assert {h["event_id"] for h in stored.values()} == {e["event_id"] for e in events}
        assert all(0.0 <= float(h["score"]) <= 1.0 for h in stored.values())
        assert {h["model_version"] for h in stored.values()} == {"v1+u0"}

        records = read_topic(dep.bootstrap, dep.predictions_topic)
        counts = Counter(r["event_id"] for r in records)
        assert set(counts) == {e["event_id"] for e in events}
        assert max(counts.values()) == 1, counts.most_common(3)
        first = next(r for r in records if r["event_id"] == events[0]["event_id"])
        assert first["_key"] == events[0]["key"].encode()
        assert first["_ts"] == first["event_ts"]  # record timestamp = the input's event time


def test_out_of_order_events_keep_the_newest_prediction(services: Any, new_topic: Any,
                                                       redis_client: redis.Redis,
                                                       tmp_path: Path) -> None:
    with deployment(services, new_topic, tmp_path, partitions=1) as dep:
        worker = dep.start_worker()
        dep.wait_ready([worker], redis_client)
        key = f"ooo-{uuid.uuid4().hex[:8]}"
        base = now_ms() - 60_000
        # newest first, then two older ones: in separate sends (batches) and in one batch
        order = [(3, "c"), (1, "a"), (2, "b")]
        for offset_s, name in order[:1]:
            _publish(dep.bootstrap, dep.events_topic, [
                {"event_id": f"{key}-{name}", "key": key, "ts": base + offset_s * 1000,
                 "features": [float(offset_s)] * 8}])
        time.sleep(1.0)
        _publish(dep.bootstrap, dep.events_topic, [
            {"event_id": f"{key}-{name}", "key": key, "ts": base + offset_s * 1000,
             "features": [float(offset_s)] * 8} for offset_s, name in order[1:]])
        wait_for(lambda: len(read_topic(dep.bootstrap, dep.predictions_topic, idle_s=0.5)) == 3,
                 60, "three predictions", dep.log_tail)
        stored = redis_predictions(redis_client, APP, [key])[key]
        assert stored["event_id"] == f"{key}-c"
        assert int(stored["event_ts"]) == base + 3000


def test_poison_records_go_to_the_dead_letter_topic(services: Any, new_topic: Any,
                                                    redis_client: redis.Redis,
                                                    tmp_path: Path) -> None:
    with deployment(services, new_topic, tmp_path, partitions=2) as dep:
        worker = dep.start_worker()
        dep.wait_ready([worker], redis_client)
        run = uuid.uuid4().hex[:8]
        poison = [
            b"\x01\x02 not avro, not json",
            b'{"event_id": "p1", "key": "k", "ts": 1764120000000, "features": [1, 2]}',
            b'{"event_id": "p2", "key": "k", "ts": 1764120000000, "features": "nope"}',
            b"{truncated json",
        ]
        # kcat, as a user would publish raw bytes: one record per line
        subprocess.run(["kcat", "-P", "-b", dep.bootstrap, "-t", dep.events_topic, "-k", "k"],
                       input=b"\n".join(poison) + b"\n", check=True, timeout=30)
        good = _events(run, 50)
        _publish(dep.bootstrap, dep.events_topic, good)
        wait_for(lambda: _all_predicted(redis_client, good), 60, "the good events",
                 dep.log_tail)
        dlq: list[dict[str, Any]] = []

        def four_dead_letters() -> bool:
            dlq[:] = read_topic(dep.bootstrap, f"{dep.events_topic}.dlq", schema="", idle_s=1.0)
            return len(dlq) >= 4

        wait_for(four_dead_letters, 30, "four dead letters", dep.log_tail)
        assert sorted(d["_value"] for d in dlq) == sorted(poison)
        reasons = {d["_value"]: d["_headers"]["streaminfer.reason"].decode() for d in dlq}
        assert "unknown wire format" in reasons[poison[0]]
        assert "expected 8 numbers, got 2" in reasons[poison[1]]
        assert "features" in reasons[poison[2]]
        assert "invalid JSON" in reasons[poison[3]]
        for d in dlq:
            assert d["_headers"]["streaminfer.source_topic"].decode() == dep.events_topic
            assert int(d["_headers"]["streaminfer.source_offset"]) >= 0
        assert worker.poll() is None  # the worker went on


def test_killed_worker_partitions_move_and_nothing_is_lost(services: Any, new_topic: Any,
                                                           redis_client: redis.Redis,
                                                           tmp_path: Path) -> None:
    with deployment(services, new_topic, tmp_path, partitions=4) as dep:
        victim, survivor = dep.start_worker(), dep.start_worker()
        dep.wait_ready([victim, survivor], redis_client)
        events = _events(uuid.uuid4().hex[:8], 20_000)
        sender = threading.Thread(target=_publish,
                                  args=(dep.bootstrap, dep.events_topic, events, 2000))
        sender.start()
        time.sleep(3.0)
        victim.send_signal(signal.SIGKILL)  # mid-stream, by PID
        victim.wait(10)
        sender.join()
        wait_for(lambda: _all_predicted(redis_client, events), 120,
                 "every event predicted after the kill", dep.log_tail)
        assert survivor.poll() is None
