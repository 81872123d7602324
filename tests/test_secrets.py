"""Passwords given to streaminfer never show: not in logs, metrics, stored manifests or errors.

A worker runs with a password in its Redis URL (a ``requirepass`` redis-server of the test's
own) and a Kafka ``sasl.password``; the test then reads everything a user or an attacker with
read access to logs, ``/metrics`` and Redis could see, and looks for the passwords.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import OwnRedis, free_port
from workers import deployment, wait_for

from streaminfer.connectors.redis_client import connect
from streaminfer.errors import ConfigError

pytestmark = [pytest.mark.services, pytest.mark.security, pytest.mark.timeout(300)]

REDIS_SECRET = "r3dis-S3CRET-pw"
KAFKA_SECRET = "k4fka-S3CRET-pw"
SECRETS = (REDIS_SECRET, KAFKA_SECRET)


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    (tmp_path / "redis").mkdir()
    server = OwnRedis(tmp_path / "redis", password=REDIS_SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _everything_in(client: redis.Redis) -> str:
    """Every key and value in the database, as text (manifests, metrics, checkpoints...)."""
    read = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1), "list": lambda k: client.lrange(k, 0, -1),
            "stream": client.xrange}
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        out.append(f"{key!r} {read[kind](key)!r}")
    return "\n".join(out)


def _assert_hidden(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a password:\n{text[-3000:]}"


def test_worker_shows_no_password_in_logs_metrics_or_manifests(
        services: object, new_topic: object, tmp_path: Path, locked_redis: OwnRedis) -> None:
    port = free_port()
    with deployment(services, new_topic, tmp_path, partitions=2) as dep:
        dep.redis_url = locked_redis.url
        dep.extra_env.update({"STREAMINFER_METRICS_PORT": str(port),
                              "STREAMINFER_CHECKPOINT_URL": locked_redis.url,
                              "STREAMINFER_CHECKPOINT_EVERY_S": "1",
                              "STREAMINFER_PUBLISH_PARAMS_EVERY_S": "1",
                              "STREAMINFER_LOG_FORMAT": "json"})
        kafka_auth = ("-X", "sasl.username=app", "-X", f"sasl.password={KAFKA_SECRET}")
        proc = dep.start_worker("--loglevel", "debug", global_args=kafka_auth)
        client = locked_redis.client()
        dep.wait_ready([proc], client)
        wait_for(lambda: client.zcard("ckpts:classifier") > 0, 60, "a checkpoint", dep.log_tail)
        wait_for(lambda: client.exists("params:classifier:latest") > 0, 60, "published params",
                 dep.log_tail)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        registered = subprocess.run(
            [sys.executable, "-m", "streaminfer", *kafka_auth, "model", "register",
             "classifier", "params:classifier:latest", "--registry", locked_redis.url],
            env=dep.env(), capture_output=True, text=True, timeout=120)
        assert registered.returncode == 0, registered.stderr
        dep.stop_all()
    assert "streaminfer_" in metrics and client.keys("registry:classifier:*")
    _assert_hidden("/metrics", metrics)
    _assert_hidden("the worker's log", dep.log_tail(100_000))
    _assert_hidden("`model register`'s output", registered.stdout + registered.stderr)
    _assert_hidden("Redis (checkpoint and registry manifests, metrics)", _everything_in(client))


def test_wrong_redis_password_fails_fast_without_showing_it(
        services: object, new_topic: object, tmp_path: Path, locked_redis: OwnRedis) -> None:
    wrong = locked_redis.url_for(f":{KAFKA_SECRET}@")  # a wrong password that must not show
    with pytest.raises(redis.AuthenticationError) as caught:
        connect(wrong, socket_timeout=5).ping()
    _assert_hidden("the client's error", repr(caught.value) + str(caught.value))
    with deployment(services, new_topic, tmp_path, partitions=1) as dep:
        dep.redis_url = wrong
        proc = dep.start_worker()
        assert proc.wait(120) != 0
        log = dep.log_tail(100_000)
    assert "Redis" in log and "password" in log.lower(), log
    _assert_hidden("the worker's log", log)


def test_config_errors_about_redis_urls_do_not_repeat_the_password() -> None:
    for url in (f"redis+cluster://app:{REDIS_SECRET}@127.0.0.1:7000/3",
                f"redis+cluster://app:{REDIS_SECRET}@127.0.0.1:7000/0?bogus=1",
                f"redis+cluster://:{REDIS_SECRET}@:x"):
        with pytest.raises(ConfigError) as caught:
            connect(url)
        _assert_hidden("the error", str(caught.value))
