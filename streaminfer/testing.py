"""Helpers for testing an app against the real local Kafka and Redis (``streaminfer dev up``).

A test publishes records, runs the app's worker as ``streaminfer worker`` would, and reads
what a user reads: the predictions topic and the Redis hashes::

    from streaminfer.testing import LocalServices, publish, run_worker, wait_for_predictions

    def test_my_app(tmp_path):
        services = LocalServices.find()            # starts Kafka and Redis when needed
        with run_worker("myapp:app", services, name="myapp", log=tmp_path / "w.log"):
            publish(services, "events", records, schema="event.avsc", key="key")
            rows = wait_for_predictions(services, app="myapp", keys=[...], timeout=120)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LocalServices", "publish", "run_worker", "wait_for", "wait_for_predictions"]


@dataclass(frozen=True)
class LocalServices:
    """Where the Kafka broker and Redis server answer."""

    bootstrap: str
    redis_url: str

    @classmethod
    def find(cls, start: bool = True) -> LocalServices:
        """``KAFKA_BOOTSTRAP``/``REDIS_URL`` if set, else the local dev services (started with
        ``streaminfer dev up`` when ``start`` and they do not answer)."""
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "")
        redis_url = os.environ.get("REDIS_URL", "")
        if not (bootstrap and redis_url) and start:
            from streaminfer.streams.cli.dev import SERVICES_SCRIPT

            out = subprocess.run(["bash", str(SERVICES_SCRIPT), "up"], check=True,
                                 capture_output=True, text=True).stdout
            found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            bootstrap = bootstrap or found.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
            redis_url = redis_url or found.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        return cls(bootstrap or "127.0.0.1:9092", redis_url or "redis://127.0.0.1:6379/0")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a worker process needs to find these servers."""
        return {**os.environ, "KAFKA_BOOTSTRAP": self.bootstrap, "REDIS_URL": self.redis_url,
                "PYTHONUNBUFFERED": "1", "STREAMINFER_METRICS_PORT": "0", **extra}


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "") -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (and ``on_timeout()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")


@contextlib.contextmanager
def run_worker(app: str, services: LocalServices, *args: str, name: str, log: Path,
               cwd: Path | None = None, env: dict[str, str] | None = None,
               ready_timeout: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """``streaminfer worker --app APP ARGS`` until the block ends (then SIGTERM), once it
    reads its partitions (its metrics key in Redis says so). ``name`` is the app's name."""
    from streaminfer.connectors.redis_client import connect as connect_redis

    full_env = {**services.env(), **(env or {})}
    handle = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "streaminfer", "worker", "--app", app,
                             *args], cwd=cwd, env=full_env, stdout=handle,
                            stderr=subprocess.STDOUT)
    client = connect_redis(services.redis_url)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{_tail(log)}")
        key = next(iter(client.scan_iter(f"metrics:{name}:*-{proc.pid}")), None)
        raw = client.get(key) if key else None
        return bool(raw and json.loads(raw).get("partitions"))

    try:
        wait_for(ready, ready_timeout, f"worker {app} to read its partitions",
                 lambda: _tail(log))
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        handle.close()
        client.close()


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def publish(services: LocalServices, topic: str, records: Sequence[dict[str, Any]], *,
            schema: str | Path | dict[str, Any], key: str, event_time: str | None = "ts",
            wire_format: str = "single-object") -> None:
    """Publish ``records`` (Avro of ``schema``) keyed by their ``key`` field, stamped with
    their event time; waits until Kafka acknowledged all of them."""
    from streaminfer.connectors.avro import RecordCodec
    from streaminfer.connectors.kafka import make_producer

    codec = RecordCodec(schema if isinstance(schema, dict) else _schema(schema), wire_format)  # type: ignore[arg-type]
    producer = make_producer({"bootstrap.servers": services.bootstrap, "linger.ms": 5})
    for record in records:
        ts = record.get(event_time) if event_time else None
        producer.produce(topic, codec.encode(record), str(record[key]).encode(),
                         timestamp=int(ts) if ts is not None else 0)
        producer.poll(0)
    if producer.flush(60):
        raise AssertionError(f"Kafka did not acknowledge every record sent to {topic}")


def _schema(spec: str | Path) -> dict[str, Any]:
    from streaminfer.connectors.avro import load_schema

    return load_schema(spec)


def wait_for_predictions(services: LocalServices, *, app: str, keys: Sequence[str],
                         timeout: float = 120) -> dict[str, dict[str, str]]:
    """The Redis hashes ``pred:{app}:{key}`` of ``keys``, once every one of them exists."""
    from streaminfer.connectors.redis_client import connect as connect_redis

    client = connect_redis(services.redis_url, decode_responses=True)
    found: dict[str, dict[str, str]] = {}

    def all_there() -> bool:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(f"pred:{app}:{key}")
        found.update({k: v for k, v in zip(keys, pipe.execute(), strict=True) if v})
        return len(found) == len(keys)

    try:
        wait_for(all_there, timeout, f"predictions of {len(keys)} keys of {app} in Redis",
                 lambda: f"{len(found)} of {len(keys)} found")
    finally:
        client.close()
    return found
