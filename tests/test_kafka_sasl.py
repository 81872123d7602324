"""streaminfer against a Kafka that wants SASL/SCRAM over TLS and enforces ACLs.

One broker of this module's own (``tests/secure_kafka.py``: SASL_SSL listener, certificates
made here, ``StandardAuthorizer``) holds topics for the ``app`` user and one it may not read.
The app user is configured the way docs/security.md tells users to: the
``STREAMINFER_KAFKA_*`` settings. Starting the broker takes 20-60 s; the module's tests
share it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from certs import make_certs
from confluent_kafka import KafkaError
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from secure_kafka import MECHANISM, SecureBroker
from workers import Deployment, redis_predictions, wait_for

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_consumer, make_producer
from streaminfer.connectors.records import now_ms
from streaminfer.streams.settings import load_settings

pytestmark = [pytest.mark.services, pytest.mark.security, pytest.mark.timeout(600)]

APP_USER, APP_PW = "app", "app-kafka-pw-31f"
FEEDER, FEEDER_PW = "feeder", "feeder-pw-88c"  # the upstream service that writes the input
GROUP = f"secure-{uuid.uuid4().hex[:6]}"
TOPICS = {"in": f"{GROUP}-events", "feedback": f"{GROUP}-events-feedback",
          "out": f"{GROUP}-predictions", "dlq": f"{GROUP}-events.dlq",
          "other": f"payroll-{uuid.uuid4().hex[:6]}"}


def _acl(kind: ResourceType, name: str, op: AclOperation,
         pattern: ResourcePatternType = ResourcePatternType.LITERAL,
         user: str = APP_USER) -> AclBinding:
    return AclBinding(kind, name, pattern, f"User:{user}", "*", op, AclPermissionType.ALLOW)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    workdir = tmp_path_factory.mktemp("sasl-broker")
    users = {APP_USER: APP_PW, FEEDER: FEEDER_PW}
    server = SecureBroker(workdir, make_certs(workdir / "certs"), users)
    server.start()
    try:
        admin = server.admin()
        for future in admin.create_topics([NewTopic(t, 2, 1) for t in TOPICS.values()]).values():
            future.result()
        # The app may read its inputs, write its outputs, and do anything to the topics and
        # groups named after its consumer group (Faust's owners topic, changelogs, sync);
        # nothing on the "other" topic. Only the feeder writes the input.
        acls = [_acl(ResourceType.TOPIC, TOPICS["in"], AclOperation.WRITE, user=FEEDER),
                _acl(ResourceType.TOPIC, TOPICS["in"], AclOperation.READ),
                _acl(ResourceType.TOPIC, TOPICS["feedback"], AclOperation.READ),
                _acl(ResourceType.TOPIC, TOPICS["out"], AclOperation.WRITE),
                _acl(ResourceType.TOPIC, TOPICS["dlq"], AclOperation.WRITE),
                _acl(ResourceType.TOPIC, GROUP, AclOperation.ALL, ResourcePatternType.PREFIXED),
                _acl(ResourceType.GROUP, GROUP, AclOperation.ALL, ResourcePatternType.PREFIXED)]
        for future in admin.create_acls(acls).values():
            future.result()
        yield server
    finally:
        server.stop()


def _env(broker: SecureBroker, password: str = APP_PW, user: str = APP_USER) -> dict[str, str]:
    """The settings a user gives a worker or the CLI (docs/security.md)."""
    return {"KAFKA_BOOTSTRAP": broker.bootstrap,
            "STREAMINFER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMINFER_KAFKA_SASL_MECHANISM": MECHANISM,
            "STREAMINFER_KAFKA_SASL_USERNAME": user,
            "STREAMINFER_KAFKA_SASL_PASSWORD": password,
            "STREAMINFER_KAFKA_SSL_CA_LOCATION": str(broker.tls.ca)}


def _settings(monkeypatch: pytest.MonkeyPatch, broker: SecureBroker, **env: str) -> Any:
    for key, value in {**_env(broker), **env}.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def _produce(broker: SecureBroker, count: int, password: str = FEEDER_PW
             ) -> subprocess.CompletedProcess[str]:
    """``streaminfer produce`` of ``count`` synthetic events, as the feeder."""
    return subprocess.run([sys.executable, "-m", "streaminfer", "produce", TOPICS["in"],
                           "--synthetic", "classifier", "--count", str(count)],
                          env={**os.environ, **_env(broker, password, FEEDER)},
                          capture_output=True, text=True, timeout=180)


def _read(config: dict[str, Any], topic: str, want: int) -> tuple[list[bytes], KafkaError | None]:
    """Up to ``want`` values of ``topic`` through streaminfer's consumer, or the error."""
    consumer = make_consumer(config, f"{GROUP}-reader-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                return values, msg.error()
            values.append(msg.value())
            if len(values) >= want:
                break
    finally:
        consumer.close()
    return values, None


def test_produce_and_consume_with_the_right_credentials(
        broker: SecureBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _produce(broker, 20)
    assert out.returncode == 0, out.stderr
    values, error = _read(_settings(monkeypatch, broker).kafka_config(), TOPICS["in"], 20)
    assert error is None and len(values) == 20


def test_wrong_password_fails_fast_with_a_clear_error(broker: SecureBroker) -> None:
    out = _produce(broker, 5, password="not-the-password")
    assert out.returncode != 0
    assert f"refused the SASL credentials (user '{FEEDER}')" in out.stderr, out.stderr
    assert "not-the-password" not in out.stdout + out.stderr


def test_worker_with_a_wrong_password_stops_at_start(broker: SecureBroker, services: Any,
                                                     tmp_path: Path) -> None:
    dep = Deployment(broker.bootstrap, services.redis_url, TOPICS["in"], TOPICS["out"],
                     tmp_path, partitions=2, group=GROUP,
                     extra_env=_env(broker, password="not-the-password"))
    try:
        proc = dep.start_worker()
        assert proc.wait(180) != 0
    finally:
        dep.stop_all()
    log = dep.log_tail(100_000)
    assert f"refused the SASL credentials (user '{APP_USER}')" in log, log
    assert "not-the-password" not in log


def test_reading_another_topic_is_refused(broker: SecureBroker,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    admin_producer = make_producer(broker.client_config("admin", "admin-pw-5b2a"))
    admin_producer.produce(TOPICS["other"], b"salary")
    assert admin_producer.flush(30) == 0
    config = _settings(monkeypatch, broker).kafka_config()
    values, error = _read(config, TOPICS["other"], 1)
    assert values == [] and error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_worker_serves_over_sasl_ssl(broker: SecureBroker, services: Any,
                                     redis_client: redis.Redis, tmp_path: Path) -> None:
    dep = Deployment(broker.bootstrap, services.redis_url, TOPICS["in"], TOPICS["out"],
                     tmp_path, partitions=2, group=GROUP, extra_env=_env(broker))
    run = uuid.uuid4().hex[:8]
    events = [{"event_id": f"{run}-{i}", "key": f"{run}-{i}", "ts": now_ms(),
               "features": [float(i % 7)] * 8} for i in range(40)]
    try:
        proc = dep.start_worker()
        dep.wait_ready([proc], redis_client, timeout=180)
        producer = make_producer(broker.client_config(FEEDER, FEEDER_PW))
        codec = RecordCodec("event")
        for event in events:
            producer.produce(TOPICS["in"], codec.encode(event), event["key"].encode())
        assert producer.flush(30) == 0
        keys = [e["key"] for e in events]
        wait_for(lambda: len(redis_predictions(redis_client, "classifier", keys)) == len(keys),
                 120, "every event predicted by the SASL_SSL worker", dep.log_tail)
    finally:
        dep.stop_all()
    assert proc.returncode == 0, dep.log_tail()
    assert APP_PW not in dep.log_tail(100_000)
