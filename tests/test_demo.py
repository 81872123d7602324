"""``streaminfer demo`` run the way a user runs it: a subprocess against the real services.

Each test gets its own input topic and consumer group (through ``STREAMINFER_*`` variables,
which the demo's workers inherit), so tests and other users of the shared broker do not steal
each other's partitions.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from servers import Services

from streaminfer.streams.demo import FleetStats, unpredicted, worker_args
from streaminfer.streams.settings import load_settings

PID_LINE = re.compile(r"^started worker (\d+) \(pid (\d+)\)", re.MULTILINE)
PREDICTION_ROW = re.compile(
    r"(user-\d+)\s*\S\s*(demo-[0-9a-f]+-\d+)\s*\S\s*([01]\.\d{4})\s*\S\s*(\S+)")


class Demo:
    """A ``streaminfer demo`` process with private topics and group; output read as it comes."""

    def __init__(self, bootstrap: str, redis_url: str, log_dir: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.topic = f"demo-events-{tag}"
        self.predictions = f"demo-predictions-{tag}"
        self.feedback = f"demo-feedback-{tag}"
        self.group = f"demo-{tag}"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output = ""

    def start(self, *args: str) -> None:
        env = {**os.environ, "STREAMINFER_EVENTS_TOPIC": self.topic,
               "STREAMINFER_PREDICTIONS_TOPIC": self.predictions,
               "STREAMINFER_FEEDBACK_TOPIC": self.feedback,
               "STREAMINFER_CONSUMER_GROUP": self.group, "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streaminfer.streams.cli", "--bootstrap", self.bootstrap,
             "--redis-url", self.redis_url, "demo", "--log-dir", str(self.log_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.output += line
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r} within {timeout}s:\n{self.output}")

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            while (line := self.lines.get(timeout=5)) is not None:
                self.output += line
        return code

    def worker_pids(self) -> list[int]:
        return [int(pid) for _index, pid in PID_LINE.findall(self.output)]

    def predictions_written(self) -> int:
        """Records on the run's private predictions topic: one per event the workers scored."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                             "log_level": 0})
        try:
            parts = consumer.list_topics(self.predictions, timeout=10).topics[self.predictions]
            return sum(consumer.get_watermark_offsets(TopicPartition(self.predictions, p),
                                                      timeout=10)[1]
                       for p in parts.partitions)
        finally:
            consumer.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        # ours, plus what the workers made for the group (Faust's owners/changelog topics)
        topics = [t for t in admin.list_topics(timeout=10).topics
                  if t.startswith((self.topic, self.predictions, self.feedback, self.group))]
        for future in admin.delete_topics(topics, operation_timeout=10).values():
            try:
                future.result()
            except Exception as exc:  # a leftover topic is harmless; say so and go on
                print(f"test_demo: could not delete a topic: {exc}")


def running_worker(pid: int) -> bool:
    """Is ``pid`` still a live (not zombie) streaminfer process? Guards against PID reuse."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"streaminfer.streams.cli" in cmdline and state != "Z"


@pytest.fixture
def demo(services: Services, tmp_path: Path) -> Iterator[Demo]:
    run = Demo(services.bootstrap, services.redis_url, tmp_path)
    yield run
    run.close()


def test_demo_predicts_every_event_reads_them_back_and_stops_its_workers(demo: Demo) -> None:
    demo.start("--duration", "5", "--rate", "500", "--workers", "2")
    code = demo.wait(timeout=150)
    out = demo.output

    assert code == 0, out
    assert "done: 2,500 events published and predicted" in out, out
    # parameter sync is on by default: both workers end on the group's one version
    summary = out[out.index("done: 2,500"):]
    assert re.search(r"model v1\+u\d+ on every worker", summary), summary
    assert demo.predictions_written() >= 2500, "every event must have its prediction record"
    rows = PREDICTION_ROW.findall(out)
    assert "predictions read back from Redis" in out and rows, out
    for _key, event_id, score, _version in rows:
        assert 0 <= int(event_id.rsplit("-", 1)[1]) < 2500
        assert 0.0 <= float(score) <= 1.0
    pids = demo.worker_pids()
    assert len(pids) == 2, out
    for pid in pids:
        assert f"(pid {pid}) stopped, exit code 0" in out, out
        assert not running_worker(pid), f"worker pid {pid} survived the demo"
    assert "started local" not in out, "services were up: the demo must not start (or stop) them"


def test_ctrl_c_while_workers_start_stops_every_worker_it_started(demo: Demo) -> None:
    demo.start("--duration", "60", "--rate", "200", "--workers", "2")
    demo.wait_for_line("started worker 2 ", timeout=60)
    pids = demo.worker_pids()
    assert len(pids) == 2 and all(running_worker(pid) for pid in pids), demo.output
    assert demo.proc is not None
    demo.proc.send_signal(signal.SIGINT)
    code = demo.wait(timeout=60)

    assert code == 130, demo.output
    assert "interrupted" in demo.output
    for pid in pids:
        assert not running_worker(pid), f"worker pid {pid} survived Ctrl-C"


def test_fleet_stats_weights_batches_and_reports_the_worst_latency() -> None:
    stats = FleetStats.of([
        {"events": 900, "batches": 10, "rejected": 1, "rate": 300.0, "batch_avg": 90.0,
         "p50_ms": 10.0, "p99_ms": 40.0, "model_version": "v1"},
        None,  # a worker that has not reported yet
        {"events": 100, "batches": 10, "rejected": 2, "rate": 100.0, "batch_avg": 10.0,
         "p50_ms": 30.0, "p99_ms": 35.0, "model_version": "v1+u3"},
    ])
    assert (stats.alive, stats.events, stats.rejected, stats.rate) == (2, 1000, 3, 400.0)
    assert stats.batch_avg == 50.0  # 1000 events / 20 batches, not the mean of 90 and 10
    assert (stats.p50_ms, stats.p99_ms) == (30.0, 40.0)
    assert stats.model_version == "v1, v1+u3"  # workers learn apart: show every version
    assert FleetStats.of([None, None]).alive == 0


def test_fleet_stats_knows_the_partitions_only_when_every_worker_reports_them() -> None:
    base = {"events": 0, "rejected": 0, "rate": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    both = FleetStats.of([{**base, "partitions": [0, 2]}, {**base, "partitions": [1, 3]}])
    assert both.partitions == frozenset({0, 1, 2, 3})
    assert FleetStats.of([{**base, "partitions": [0]}, base]).partitions is None


def test_a_key_counts_as_predicted_once_redis_holds_its_newest_event(
        redis_client: redis.Redis) -> None:
    app = f"demo-test-{uuid.uuid4().hex[:8]}"
    latest = {"a": (2000, "e-2"), "b": (2000, "e-5"), "c": (3000, "e-9")}
    redis_client.hset(f"pred:{app}:a", mapping={"event_ts": 2000, "event_id": "e-2"})
    redis_client.hset(f"pred:{app}:b", mapping={"event_ts": 1000, "event_id": "e-4"})  # older
    try:
        assert unpredicted(redis_client, app, latest) == 2  # b is behind, c has nothing
        redis_client.hset(f"pred:{app}:b", mapping={"event_ts": 2500, "event_id": "e-7"})
        redis_client.hset(f"pred:{app}:c", mapping={"event_ts": 3000, "event_id": "e-9"})
        assert unpredicted(redis_client, app, latest) == 0  # newer rows count as predicted
    finally:
        redis_client.delete(*(f"pred:{app}:{key}" for key in latest))


def test_workers_get_the_demos_global_options() -> None:
    settings = load_settings(bootstrap_servers="127.0.0.1:19092",
                             redis_url="redis://127.0.0.1:6399/0")
    args = worker_args(settings, {"wire_format": "json",
                                  "kafka_properties": {"client.rack": "r1"}}, "recommender")
    assert args[:2] == ["-m", "streaminfer.streams.cli"]
    flags = " ".join(args)
    assert "--bootstrap 127.0.0.1:19092 --redis-url redis://127.0.0.1:6399/0" in flags
    assert "--wire-format json -X client.rack=r1 worker --app recommender" in flags
    # workers start with the default parameter sync, which keeps their models together
    assert "--sync-mode" not in flags and settings.sync_mode == "async"
