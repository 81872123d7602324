"""Operating a running worker: its /metrics under load, /healthz when a lane stalls, and
/healthz through a Redis outage, against the real broker and a Redis server of this module's
own (the outage test stops and restarts it; the shared dev Redis is never touched)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource
from prometheus_client.parser import text_string_to_metric_families
from servers import OwnRedis, free_port
from workers import Deployment, deployment, redis_predictions, wait_for

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.publish import publish_chunks

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]
APP = "classifier"
STALL_AFTER_S = 3.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def get(port: int, path: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read().decode()
    if path != "/metrics":
        return status, json.loads(body)
    return status, body


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as (name, sorted labels) -> value."""
    status, text = get(port, "/metrics")
    assert status == 200
    assert isinstance(text, str)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def start(dep: Deployment, port: int, *args: str, global_args: tuple[str, ...] = ()) -> None:
    proc = dep.start_worker("--metrics-port", str(port), *args, global_args=global_args)
    wait_for(lambda: _ready(proc, port), 120, "the worker's /readyz", dep.log_tail)


def _ready(proc: subprocess.Popen[bytes], port: int) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"worker exited with {proc.returncode}")
    try:
        status, body = get(port, "/readyz")
    except OSError:
        return False
    return status == 200 and isinstance(body, dict) and bool(body.get("partitions"))


def events(run: str, count: int) -> list[dict[str, Any]]:
    feats = np.random.default_rng(0).normal(size=(count, 8)).astype(np.float32).tolist()
    return [{"event_id": f"{run}-{i}", "key": f"{run}-{i}", "ts": None, "features": f}
            for i, f in enumerate(feats)]


def publish(dep: Deployment, batch: list[dict[str, Any]], rate: float = 0,
            garbage: int = 0) -> None:
    producer = make_producer({"bootstrap.servers": dep.bootstrap})
    chunks = [batch[i:i + 1000] for i in range(0, len(batch), 1000)]
    report = publish_chunks(producer, dep.events_topic, RecordCodec("event"), chunks,
                            key_field="key", rate=rate)
    assert report.failed == 0, report.failure_examples
    for i in range(garbage):
        producer.produce(dep.events_topic, b"\x07not avro", f"bad-{i}".encode())
    assert producer.flush(30) == 0


def all_in_redis(client: redis.Redis, batch: list[dict[str, Any]]) -> bool:
    return len(redis_predictions(client, APP, [e["key"] for e in batch])) == len(batch)


def created_by_worker(dep: Deployment) -> dict[str, str | None]:
    """Topics of this deployment other than the two the test made, with the
    ``min.insync.replicas`` set on each (``None``: left to the broker's default)."""
    admin = AdminClient({"bootstrap.servers": dep.bootstrap, "log_level": 0})
    names = [t for t in admin.list_topics(timeout=10).topics
             if t.startswith((dep.events_topic, dep.group)) and t != dep.events_topic]
    out: dict[str, str | None] = {}
    for name in names:
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        entry = admin.describe_configs([resource])[resource].result(10)["min.insync.replicas"]
        out[name] = entry.value if entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value else None
    return out


def test_metrics_count_what_was_sent(services: Any, new_topic: Any, own_redis: OwnRedis,
                                     tmp_path: Path) -> None:
    port = free_port()
    with deployment(services, new_topic, tmp_path, partitions=4) as dep:
        dep.redis_url = own_redis.url
        start(dep, port)
        sent = events(uuid.uuid4().hex[:8], 6000)
        publish(dep, sent, rate=3000, garbage=7)
        wait_for(lambda: total(scrape(port), "streaminfer_events_total") >= len(sent) + 7, 120,
                 "the worker to count every record", dep.log_tail)
        client = redis.Redis.from_url(own_redis.url)
        wait_for(lambda: all_in_redis(client, sent), 60, "every prediction in Redis",
                 dep.log_tail)
        time.sleep(1.5)  # lag is measured once a second
        m = scrape(port)

        assert total(m, "streaminfer_events_total", app=APP) == len(sent) + 7
        assert total(m, "streaminfer_predictions_total", app=APP) == len(sent)
        assert total(m, "streaminfer_rejected_total", reason="decode") == 7
        assert total(m, "streaminfer_rejected_total") == 7
        assert total(m, "streaminfer_dead_letters_total") == 7
        # every record went through some batch; every prediction has a latency
        assert total(m, "streaminfer_batch_size_sum") == len(sent) + 7
        assert total(m, "streaminfer_event_latency_seconds_count") == len(sent)
        assert total(m, "streaminfer_batch_service_seconds_count") == total(
            m, "streaminfer_batch_size_count") > 0
        assert total(m, "streaminfer_sink_retries_total") == 0
        lags = {dict(lab)["partition"]: v for (n, lab), v in m.items()
                if n == "streaminfer_consumer_lag" and dict(lab)["topic"] == dep.events_topic}
        assert set(lags) == {"0", "1", "2", "3"} and sum(lags.values()) == 0, lags
        assert m[("streaminfer_model_version_info", (("app", APP), ("version", "v1")))] == 1
        assert total(m, "streaminfer_ready") == 1
        assert total(m, "streaminfer_lane_stalled") == 0
        assert time.time() - total(m, "streaminfer_lane_last_progress_timestamp_seconds") < 60

        # a learning worker's topics (parameter sync is on by default), each with the
        # settings' min.insync.replicas; no Faust leader topic (no leader-only timers)
        group = f"{dep.group}-{APP}"
        assert created_by_worker(dep) == dict.fromkeys(
            [f"{dep.events_topic}.dlq", dep.feedback_topic, f"{dep.feedback_topic}.dlq",
             f"{group}-owners", f"{group}-join-changelog", f"{group}-sync"], "1")


def test_healthz_fails_when_a_lane_stalls(services: Any, new_topic: Any, own_redis: OwnRedis,
                                          tmp_path: Path) -> None:
    port = free_port()
    stall = tmp_path / "stall"
    with deployment(services, new_topic, tmp_path, partitions=2) as dep:
        dep.redis_url = own_redis.url
        dep.extra_env["STREAMINFER_TEST_STALL_FILE"] = str(stall)
        start(dep, port, "--stall-after-s", str(STALL_AFTER_S), "--no-learn")
        # --no-learn: no label topics, no join changelog
        assert set(created_by_worker(dep)) == {f"{dep.events_topic}.dlq",
                                               f"{dep.group}-{APP}-owners"}
        run = uuid.uuid4().hex[:8]
        publish(dep, events(run + "a", 500))
        assert get(port, "/healthz")[0] == 200

        stall.touch()
        stalled_at = time.monotonic()
        publish(dep, events(run + "b", 500))  # work the stalled lane does not take
        wait_for(lambda: get(port, "/healthz")[0] == 503, 2 * STALL_AFTER_S,
                 "/healthz to report the stalled lane", dep.log_tail)
        took = time.monotonic() - stalled_at
        status, body = get(port, "/healthz")
        assert status == 503 and isinstance(body, dict) and body["stalled"] == ["0"], body
        assert total(scrape(port), "streaminfer_lane_stalled") == 1

        stall.unlink()  # the lane goes on and catches up
        wait_for(lambda: get(port, "/healthz")[0] == 200, 30, "/healthz to recover",
                 dep.log_tail)
        client = redis.Redis.from_url(own_redis.url)
        wait_for(lambda: all_in_redis(client, events(run + "b", 500)), 60,
                 "the stalled work to be written", dep.log_tail)
        print(f"/healthz failed {took:.1f} s after the lane stalled (stall_after_s "
              f"{STALL_AFTER_S})")


def test_healthz_stays_ok_through_a_redis_outage(services: Any, new_topic: Any,
                                                 own_redis: OwnRedis, tmp_path: Path) -> None:
    port = free_port()
    with deployment(services, new_topic, tmp_path, partitions=2) as dep:
        dep.redis_url = own_redis.url
        start(dep, port, "--stall-after-s", str(STALL_AFTER_S))
        during = events(uuid.uuid4().hex[:8], 2000)

        own_redis.stop()
        down_at = time.monotonic()
        publish(dep, during[:1000])
        answers: list[tuple[float, int, Any]] = []
        while time.monotonic() - down_at < 10.0:
            status, body = get(port, "/healthz")
            answers.append((round(time.monotonic() - down_at, 1), status, body))
            time.sleep(0.5)
        own_redis.start()
        publish(dep, during[1000:])

        bad = [a for a in answers if a[1] != 200]
        assert not bad, bad[:3]
        # the lane was waiting on Redis, not idle: the outage was noticed and retried
        assert any(isinstance(b, dict) and any(
            lane.get("state") == "waiting on sink" for lane in b["lanes"].values())
            for _, _, b in answers), answers[-1]
        client = redis.Redis.from_url(own_redis.url)
        wait_for(lambda: all_in_redis(client, during), 90,
                 "every event of the outage written once Redis is back", dep.log_tail)
        assert get(port, "/healthz")[0] == 200
        assert total(scrape(port), "streaminfer_sink_retries_total", sink="redis") > 0
        assert dep.procs[0].poll() is None, dep.log_tail()


def test_json_logs_without_secrets_and_a_quiet_exit(services: Any, new_topic: Any,
                                                   tmp_path: Path) -> None:
    redis_secret, kafka_secret = "r3dis-S3cret-pw", "k4fka-S3cret-pw"
    server = OwnRedis(tmp_path, password=redis_secret)
    server.start()
    port = free_port()
    try:
        with deployment(services, new_topic, tmp_path, partitions=2) as dep:
            dep.redis_url = server.url
            # a PLAINTEXT broker ignores SASL settings: the secret still goes everywhere a
            # SASL one would (settings, every client's config)
            start(dep, port, "--log-format", "json",
                  global_args=("-X", f"sasl.password={kafka_secret}",
                               "-X", "sasl.username=alice"))
            sent = events(uuid.uuid4().hex[:8], 300)
            publish(dep, sent, garbage=2)
            client = redis.Redis.from_url(server.url)
            wait_for(lambda: all_in_redis(client, sent), 60, "the predictions", dep.log_tail)
            metrics = str(get(port, "/metrics")[1])
            for path in ("/healthz", "/readyz"):
                metrics += json.dumps(get(port, path)[1])
            dep.stop_all()
            output = (tmp_path / "worker-0.log").read_text()
            assert dep.procs[0].returncode == 0, output[-3000:]
    finally:
        server.stop()

    assert isinstance(metrics, str)
    for secret in (redis_secret, kafka_secret):
        assert secret not in output and secret not in metrics
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(lines) >= 3, output[-3000:]
    assert all({"ts", "level", "logger", "message", "app", "worker"} <= set(line)
               for line in lines)
    assert {line["app"] for line in lines} == {APP}
    [where] = [line["message"] for line in lines if line["message"].startswith("kafka ")]
    assert f"redis redis://:***@127.0.0.1:{server.port}/0" in where, where
    # torch's triton bindings used to print ~1000 "nanobind: leaked" lines at exit
    assert "nanobind" not in output
    other = [line for line in output.splitlines() if line.strip() and not line.startswith("{")]
    assert len(other) < 20, other[:20]
