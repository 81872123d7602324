"""A worker on a Redis that speaks only TLS and lets the worker's ACL user touch its keys only.

The test's own redis-server (TLS port only, certificates made by ``tests/certs.py``) has an
admin (``default``, with a password) and an ``app`` user whose ACL allows the classifier's
keys and nothing else, and no dangerous commands. This is the deployment docs/security.md
recommends; the checks are what its operator relies on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from certs import make_certs
from servers import OwnRedis
from workers import deployment, redis_predictions, wait_for

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms
from streaminfer.connectors.redis_client import check_credentials, connect
from streaminfer.errors import ConfigError

pytestmark = [pytest.mark.services, pytest.mark.security, pytest.mark.timeout(300)]

ADMIN_PW = "admin-pw-0d9f"
APP_PW = "app-pw-7c1e"
#: what the classifier app touches (docs/security.md): predictions, worker metrics, checkpoints,
#: published parameters
APP_KEYS = ["pred:classifier:*", "metrics:classifier:*", "ckpt:classifier:*", "ckpts:classifier",
            "params:classifier:*"]


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    (tmp_path / "redis").mkdir()
    server = OwnRedis(tmp_path / "redis", password=ADMIN_PW, tls=make_certs(tmp_path / "certs"))
    server.start()
    server.client().acl_setuser("app", reset=True, enabled=True, passwords=[f"+{APP_PW}"],
                                keys=APP_KEYS,
                                commands=["+@all", "-@dangerous"])
    try:
        yield server
    finally:
        server.stop()


def test_worker_serves_over_tls_as_an_acl_user(services: object, new_topic: object,
                                               tmp_path: Path, tls_redis: OwnRedis) -> None:
    app_url = tls_redis.url_for(f"app:{APP_PW}@")
    assert app_url.startswith("rediss://")
    run = uuid.uuid4().hex[:8]
    events = [{"event_id": f"{run}-{i}", "key": f"{run}-{i}", "ts": now_ms(),
               "features": [float(i)] * 8} for i in range(50)]
    with deployment(services, new_topic, tmp_path, partitions=2) as dep:
        dep.redis_url = app_url
        dep.extra_env.update({"STREAMINFER_CHECKPOINT_URL": app_url,
                              "STREAMINFER_CHECKPOINT_EVERY_S": "1",
                              "STREAMINFER_PUBLISH_PARAMS_EVERY_S": "1"})
        proc = dep.start_worker()
        admin = tls_redis.client()
        dep.wait_ready([proc], admin)
        producer = make_producer({"bootstrap.servers": dep.bootstrap})
        codec = RecordCodec("event")
        for event in events:
            producer.produce(dep.events_topic, codec.encode(event), event["key"].encode())
        assert producer.flush(30) == 0
        keys = [e["key"] for e in events]
        wait_for(lambda: len(redis_predictions(admin, "classifier", keys)) == len(keys), 120,
                 "every event predicted in Redis over TLS", dep.log_tail)
        wait_for(lambda: admin.zcard("ckpts:classifier") > 0, 60, "a checkpoint", dep.log_tail)
        wait_for(lambda: admin.exists("params:classifier:latest") > 0, 60, "published params",
                 dep.log_tail)
        dep.stop_all()
        assert proc.returncode == 0, dep.log_tail()


def test_the_acl_user_cannot_touch_other_keys(tls_redis: OwnRedis) -> None:
    app = connect(tls_redis.url_for(f"app:{APP_PW}@"), socket_timeout=5)
    app.set("pred:classifier:k", "1")  # its own keys: allowed
    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to access"):
        app.set("pred:recommender:k", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.flushdb()
    assert tls_redis.client().exists("pred:recommender:k") == 0


@pytest.mark.parametrize("case", ["wrong password", "unknown user", "no CA", "plain redis://"])
def test_wrong_credentials_or_tls_fail_fast_and_say_why(tls_redis: OwnRedis, case: str) -> None:
    url = {"wrong password": tls_redis.url_for("app:not-the-pw@"),
           "unknown user": tls_redis.url_for(f"mallory:{APP_PW}@"),
           "no CA": tls_redis.url_for(f"app:{APP_PW}@").split("?")[0],
           "plain redis://": tls_redis.url_for(f"app:{APP_PW}@").replace("rediss://", "redis://")
           .split("?")[0]}[case]
    expected = {"wrong password": "refused the credentials", "unknown user":
                "refused the credentials", "no CA": "TLS failed",
                "plain redis://": "does not answer"}[case]
    with pytest.raises(ConfigError, match=expected) as caught:
        check_credentials(url, timeout=5)
    assert APP_PW not in str(caught.value) and "not-the-pw" not in str(caught.value)
