"""The moving parts of ``streaminfer demo``: services, topics, worker processes, a publisher.

Everything here is started by the demo and must be stopped by it, so each part remembers
exactly what it started (service names, worker PIDs) and stops only that. The CLI module
(``streams/cli/demo.py``) puts the parts in order and draws the live line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streaminfer.connectors.avro import make_codec
from streaminfer.connectors.kafka import DeliveryFailures, make_producer, produce_batch
from streaminfer.connectors.publish import PublishReport, publish_chunks
from streaminfer.connectors.redis_client import connect as connect_redis
from streaminfer.connectors.sources import SyntheticClassifier, SyntheticRatings
from streaminfer.errors import StreaminferError
from streaminfer.streams.settings import Settings

__all__ = [
    "DemoError",
    "FleetStats",
    "LocalServices",
    "Publisher",
    "WorkerFleet",
    "input_topic",
    "learns_from_feedback",
    "read_predictions",
    "unpredicted",
    "worker_args",
]

SERVICES_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "local" / "services.sh"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


class DemoError(StreaminferError, RuntimeError):
    """Something the demo cannot go on without; the message says what and where to look."""


def input_topic(settings: Settings) -> str:
    return settings.events_topic if settings.app == "classifier" else settings.ratings_topic


def _quiet_logger() -> logging.Logger:
    """librdkafka logs every failed connection attempt; a probe must not flood the terminal."""
    logger = logging.getLogger("streaminfer.demo.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config(logger=_quiet_logger()))


def kafka_answers(settings: Settings, timeout: float = 3.0) -> bool:
    try:
        return bool(_admin(settings).list_topics(timeout=timeout).brokers)
    except KafkaException:
        return False


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    try:
        return bool(connect_redis(url, socket_connect_timeout=timeout,
                                         socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


@dataclass
class LocalServices:
    """Starts Kafka/Redis with ``deploy/local/services.sh`` only when they do not answer.

    ``started`` lists the services this demo asked the script to start: those, and only
    those, are stopped again by :meth:`stop`. A service is listed *before* the script runs,
    so a Ctrl-C in the middle of its start still stops it.
    """

    script: Path = SERVICES_SCRIPT
    started: list[str] = field(default_factory=list)
    #: a first ``up`` may fetch the Kafka jars with Maven; ``down`` waits 30 s per service.
    up_timeout_s: float = 900.0
    down_timeout_s: float = 120.0
    _env: dict[str, str] | None = field(default=None, repr=False)

    def ensure(self, settings: Settings) -> dict[str, str]:
        """Overrides for the settings when a started service got another address."""
        env = os.environ.copy()
        missing: list[str] = []
        if not kafka_answers(settings):
            missing.append("kafka")
            env.pop("KAFKA_BOOTSTRAP", None)
            env["STREAMINFER_KAFKA_PORT"] = str(_local_port(
                "kafka", f"//{settings.bootstrap_servers.split(',')[0]}", 9092))
        if not redis_answers(settings.redis_url):
            missing.append("redis")
            env.pop("REDIS_URL", None)
            env["STREAMINFER_REDIS_PORT"] = str(_local_port("redis", settings.redis_url, 6379))
        if not missing:
            return {}
        if not self.script.is_file():
            raise DemoError(f"{' and '.join(missing)} do not answer and {self.script} is "
                            "missing: start them yourself and pass --bootstrap/--redis-url")
        self.started.extend(missing)
        self._env = env  # `down` must see the same ports and state directory
        try:
            result = subprocess.run(["bash", str(self.script), "up", *missing], env=env,
                                    capture_output=True, text=True, check=False,
                                    timeout=self.up_timeout_s)
        except subprocess.TimeoutExpired:
            raise DemoError(f"`{self.script} up {' '.join(missing)}` did not finish within "
                            f"{self.up_timeout_s:.0f}s") from None
        if result.returncode != 0:
            raise DemoError(f"`{self.script} up {' '.join(missing)}` failed:\n"
                            + _tail(result.stderr, 15))
        found = dict(line.split("=", 1) for line in result.stdout.splitlines()
                     if "=" in line and not line.startswith("#"))
        overrides = {}
        if "kafka" in missing and "KAFKA_BOOTSTRAP" in found:
            overrides["bootstrap_servers"] = found["KAFKA_BOOTSTRAP"]
        if "redis" in missing and "REDIS_URL" in found:
            overrides["redis_url"] = found["REDIS_URL"]
        return overrides

    def stop(self) -> str:
        """Stop what :meth:`ensure` started; returns the script's report (empty if nothing)."""
        if not self.started:
            return ""
        argv = ["bash", str(self.script), "down", *self.started]
        command = " ".join(argv[1:])
        self.started.clear()
        try:
            result = subprocess.run(argv, env=self._env, capture_output=True, text=True,
                                    check=False, timeout=self.down_timeout_s)
        except subprocess.TimeoutExpired:
            return f"`{command}` did not finish within {self.down_timeout_s:.0f}s: run it again"
        return (result.stderr + result.stdout).strip()


def _local_port(name: str, url: str, default: int) -> int:
    parts = urlsplit(url)
    if (parts.hostname or "") not in _LOCAL_HOSTS:
        raise DemoError(f"{name} at {url.lstrip('/')} does not answer; the demo starts local "
                        "services only on 127.0.0.1")
    return parts.port or default


def worker_args(settings: Settings, given: dict[str, Any], app: str) -> list[str]:
    """``python -m streaminfer.streams.cli`` arguments for a worker that sees what the demo sees.

    Global flags the demo got (``given``, i.e. ``ctx.obj``) are passed on; bootstrap and Redis
    always are, because the demo may have started services on other addresses.
    """
    args = ["-m", "streaminfer.streams.cli", "--bootstrap", settings.bootstrap_servers,
            "--redis-url", settings.redis_url]
    if given.get("schema_registry_url"):
        args += ["--schema-registry", given["schema_registry_url"]]
    if given.get("wire_format"):
        args += ["--wire-format", given["wire_format"]]
    for key, value in (given.get("kafka_properties") or {}).items():
        args += ["-X", f"{key}={value}"]
    # Several workers share this host: each serves /metrics on a free port (logged).
    return [*args, "worker", "--app", app, "--metrics-port", "0"]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the demo dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(text: str, lines: int) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


@dataclass
class WorkerProcess:
    """One ``streaminfer worker`` process, its log file and its Redis metrics key."""

    index: int
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_key: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "    (no log)"
        return _tail(text, lines)

    def died(self) -> DemoError:
        return DemoError(f"worker {self.index} (pid {self.pid}) exited with code "
                         f"{self.process.returncode}; log {self.log_path}:\n{self.log_tail()}")


@dataclass
class WorkerFleet:
    """The demo's worker processes: start, wait until they report, read metrics, stop."""

    settings: Settings
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, count: int, args: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        host = socket.gethostname()
        for index in range(1, count + 1):
            log_path = self.log_dir / f"worker-{index}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [sys.executable, *args], stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            # app.py names a worker f"{hostname}-{pid}" and publishes metrics under that id.
            self.workers.append(WorkerProcess(
                index, process, log_path, f"metrics:{self.settings.app}:{host}-{process.pid}"))

    def check_alive(self) -> None:
        for worker in self.workers:
            if not worker.alive():
                raise worker.died()

    def snapshots(self, client: redis.Redis) -> list[dict[str, Any] | None]:
        """Latest metrics of each worker (``None``: not reported yet or expired)."""
        raw = client.mget([w.metrics_key for w in self.workers])
        return [json.loads(value) if value else None for value in raw]

    def wait_joined(self, client: redis.Redis, timeout: float) -> None:
        """Until every worker published its metrics key; a worker that exits fails fast."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            waiting = [w for w, s in zip(self.workers, self.snapshots(client), strict=True)
                       if s is None]
            if not waiting:
                return
            if time.monotonic() > deadline:
                worker = waiting[0]
                raise DemoError(f"worker {worker.index} (pid {worker.pid}) did not report to "
                                f"Redis ({worker.metrics_key}) within {timeout:.0f}s; log "
                                f"{worker.log_path}:\n{worker.log_tail()}")
            time.sleep(0.25)

    def stop(self, timeout: float = 20.0) -> Iterator[str]:
        """SIGTERM every worker, SIGKILL those still running after ``timeout``; yields what
        happened to each (a worker finishes and commits its batch on SIGTERM)."""
        for worker in self.workers:
            if worker.alive():
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            try:
                code = worker.process.wait(max(0.0, deadline - time.monotonic()))
                yield f"worker {worker.index} (pid {worker.pid}) stopped, exit code {code}"
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                yield (f"worker {worker.index} (pid {worker.pid}) ignored SIGTERM for "
                       f"{timeout:.0f}s: killed; log {worker.log_path}")
        self.workers.clear()


@dataclass(frozen=True)
class FleetStats:
    """What the live line shows, summed or maxed over the workers' metrics snapshots."""

    alive: int = 0
    events: int = 0
    rejected: int = 0
    rate: float = 0.0
    batch_avg: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    model_version: str = ""  # each distinct version served, comma separated
    learned: int = 0
    #: input partitions the workers read; ``None`` until every live worker reports them
    partitions: frozenset[int] | None = None

    @classmethod
    def of(cls, snapshots: Sequence[dict[str, Any] | None]) -> FleetStats:
        """Batch size is weighted by each worker's batches; latency is the worst worker's."""
        live = [s for s in snapshots if s]
        if not live:
            return cls()
        batches = sum(s.get("batches", 0) for s in live)
        events = sum(s["events"] for s in live)
        return cls(
            alive=len(live),
            events=events,
            rejected=sum(s["rejected"] for s in live),
            rate=sum(s["rate"] for s in live),
            batch_avg=events / batches if batches else 0.0,
            p50_ms=max(s["p50_ms"] for s in live),
            p99_ms=max(s["p99_ms"] for s in live),
            model_version=", ".join(sorted({str(s.get("model_version", "")) for s in live})),
            learned=sum(int((s.get("learning") or {}).get("learned", 0)) for s in live),
            partitions=frozenset(p for s in live for p in s["partitions"])
            if all("partitions" in s for s in live) else None,
        )


def learns_from_feedback(settings: Settings) -> bool:
    """Whether the workers join a feedback topic (``streams.app.learns_from_feedback``; not
    imported from there because that module loads Faust and torch)."""
    return settings.learn and settings.app == "classifier"


class Publisher(threading.Thread):
    """Publishes ``rate * duration`` synthetic events at ``rate``, in the background.

    For a learning classifier it also sends each event's label to the feedback topic, one
    chunk (~0.2 s) after the event, so the workers learn online while they serve.
    Chunks are a fifth of a second of events, so :meth:`stop` takes effect within ~0.2 s.
    ``last_keys`` are the keys of the last events sent: the ones to read back from Redis.
    """

    def __init__(self, settings: Settings, rate: float, duration: float, seed: int = 0) -> None:
        super().__init__(name="demo-publisher", daemon=True)
        self.settings = settings
        self.rate = rate
        self.total = max(1, round(rate * duration))
        self.seed = seed
        self.sent = 0
        self.feedback_sent = 0
        self.feedback_failures = DeliveryFailures()
        self.last_keys: list[str] = []
        #: newest (event_ts, event_id) sent per key: what Redis must hold when all is predicted
        self.latest: dict[str, tuple[int, str]] = {}
        self.report: PublishReport | None = None
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        settings = self.settings
        if settings.app == "classifier":
            schema, key_field = "event", "key"
            # ids unique to this run: labels of an earlier demo must not join these events
            gen: Any = SyntheticClassifier(self.seed, settings.num_features,
                                           id_prefix=f"demo-{uuid.uuid4().hex[:8]}-")
        else:
            schema, key_field = "rating", "user"
            gen = SyntheticRatings(self.seed, id_prefix=f"demo-{uuid.uuid4().hex[:8]}-")
        topic = input_topic(settings)
        wire, registry = settings.effective_wire_format, settings.schema_registry_url
        codec = make_codec(schema, wire, registry, topic)
        producer = make_producer(settings.kafka_config(logger=_quiet_logger()))
        chunk = max(50, int(self.rate / 5))
        feedback = learns_from_feedback(settings)
        fb_codec = make_codec("feedback", wire, registry, settings.feedback_topic)
        sent_events: list[tuple[list[dict[str, Any]], Any]] = []

        def send_feedback() -> None:
            for events, labels in sent_events:  # stamped with their event time by now
                records = [{"event_id": e["event_id"], "key": e["key"], "label": float(y),
                            "ts": e["ts"]} for e, y in zip(events, labels.tolist(), strict=True)]
                items = ((r["key"].encode(), v, r["ts"])
                         for r, v in zip(records, fb_codec.encode_many(records), strict=True))
                self.feedback_sent += produce_batch(producer, settings.feedback_topic, items,
                                                    self.feedback_failures)
            sent_events.clear()

        def chunks() -> Iterator[list[dict[str, Any]]]:
            for events, labels in gen.chunks(self.total, chunk):
                if self._stop_event.is_set():
                    return
                send_feedback()
                self.last_keys = list(dict.fromkeys(str(e[key_field]) for e in events[-20:]))
                yield events
                latest = self.latest  # the events carry their send time now
                for e in events:
                    mark = (e["ts"], e["event_id"])
                    if mark > latest.get(e[key_field], (0, "")):
                        latest[e[key_field]] = mark
                if feedback:
                    sent_events.append((events, labels))
            send_feedback()

        def progress(count: int) -> None:
            self.sent += count

        try:
            self.report = publish_chunks(producer, topic, codec, chunks(), key_field=key_field,
                                         rate=self.rate, on_progress=progress,
                                         flush_timeout=30.0)
        except BaseException as exc:  # reported by the main thread, which owns the exit code
            self.error = exc


def unpredicted(client: redis.Redis, app: str, latest: dict[str, tuple[int, str]]) -> int:
    """Keys whose newest published event has no prediction in Redis yet.

    A key's events share a partition and are written in order, so once its newest event's
    row is stored (or a newer one, by the sink's (event_ts, event_id) rule), every earlier
    event of that key has been handled too.
    """
    keys = list(latest)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(f"pred:{app}:{key}", "event_ts", "event_id")
    missing = 0
    for key, (ts, eid) in zip(keys, pipe.execute(), strict=True):
        if ts is None or (int(ts), eid.decode()) < latest[key]:
            missing += 1
    return missing


def read_predictions(client: redis.Redis, app: str, keys: Sequence[str]) -> list[dict[str, str]]:
    """The stored ``pred:{app}:{key}`` hashes of ``keys`` (see connectors/redis_sink.py)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(f"pred:{app}:{key}")
    rows = []
    for key, raw in zip(keys, pipe.execute(), strict=True):
        if raw:
            row = {k.decode(): v.decode() for k, v in raw.items()}
            rows.append({"key": key, **row})
    return rows
