"""Shared fixtures: the real Kafka broker and Redis server, and fresh topics on them.

Tests that need the servers request ``services`` (directly or through ``settings``,
``new_topic`` or ``redis_client``), or carry ``@pytest.mark.services``; nothing else starts them.
The servers are found, in order, at ``KAFKA_BOOTSTRAP`` / ``REDIS_URL``, at the addresses the
last ``deploy/local/services.sh up`` wrote to its env file, or at the defaults; whatever does not
answer is started with ``services.sh up`` and stopped at the end of the session (set
``STREAMINFER_KEEP_SERVICES=1`` to leave it running).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from confluent_kafka.admin import AdminClient
from servers import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_REDIS_URL,
    TEST_REDIS_DB,
    Services,
    _env_file,
    kafka_answers,
    redis_answers,
    run_services,
)

from streaminfer.connectors.admin import ensure_topics
from streaminfer.streams.settings import Settings, load_settings


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Kafka and Redis, reachable; started here (and stopped at the end) only if they were not."""
    recorded = _env_file()
    external_kafka = os.environ.get("KAFKA_BOOTSTRAP") or os.environ.get(
        "STREAMINFER_BOOTSTRAP_SERVERS"
    )
    external_redis = os.environ.get("REDIS_URL") or os.environ.get("STREAMINFER_REDIS_URL")
    bootstrap = external_kafka or recorded.get("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)
    redis_url = external_redis or recorded.get("REDIS_URL", DEFAULT_REDIS_URL)

    missing: list[str] = []
    if not kafka_answers(bootstrap):
        if external_kafka:
            pytest.fail(f"Kafka at {bootstrap} (from the environment) does not answer")
        missing.append("kafka")
    if not redis_answers(redis_url):
        if external_redis:
            pytest.fail(f"Redis at {redis_url} (from the environment) does not answer")
        missing.append("redis")

    if missing:
        run_services("up", *missing)
        started = _env_file()
        bootstrap = started.get("KAFKA_BOOTSTRAP", bootstrap)
        redis_url = started.get("REDIS_URL", redis_url)
    if not external_redis:  # our own dev Redis: tests get a database of their own
        redis_url = _fresh_test_database(redis_url)
    try:
        yield Services(bootstrap=bootstrap, redis_url=redis_url)
    finally:
        if not external_redis:
            _fresh_test_database(redis_url)
        if missing and os.environ.get("STREAMINFER_KEEP_SERVICES") != "1":
            run_services("down", *missing)


def _fresh_test_database(url: str) -> str:
    """Database ``TEST_REDIS_DB`` of the dev Redis at ``url``, emptied. The end-to-end tests
    write tens of thousands of keys a run; in a database of their own they neither mix with
    the demo's nor pile up in the append-only file across runs."""
    test_url = urlunsplit(urlsplit(url)._replace(path=f"/{TEST_REDIS_DB}"))
    client = redis.Redis.from_url(test_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return test_url


@pytest.fixture(autouse=True)
def _services_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """``@pytest.mark.services`` alone is enough to get the servers up."""
    if request.node.get_closest_marker("services") is not None:
        request.getfixturevalue("services")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the servers, so ``-m 'not services'`` runs only pure tests."""
    for item in items:
        if "services" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)


@pytest.fixture
def settings(services: Services) -> Settings:
    return load_settings(bootstrap_servers=services.bootstrap, redis_url=services.redis_url)


@pytest.fixture
def new_topic(services: Services) -> Iterator[Callable[..., str]]:
    """Factory for fresh, uniquely named topics; they are deleted after the test."""
    config = {"bootstrap.servers": services.bootstrap}
    made: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        (status,) = ensure_topics(config, {name: partitions})
        assert status.created and status.partitions == partitions, status.describe()
        made.append(name)
        return name

    yield make
    if made:
        admin = AdminClient({**config, "log_level": 0})
        for future in admin.delete_topics(made, operation_timeout=10).values():
            try:
                future.result()
            except Exception as exc:  # a leftover topic is harmless; say so and go on
                print(f"new_topic: could not delete a test topic: {exc}")


@pytest.fixture
def redis_client(services: Services) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()


#: wall time of the tests of each suite marker, printed at the end of the run: the fault,
#: security and cluster suites each have a share of the CI budget (docs/reliability.md)
_SUITE_MARKERS = ("faults", "security", "cluster")
_suite_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name in _SUITE_MARKERS:
        if name in report.keywords:
            _suite_seconds[name] = _suite_seconds.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _suite_seconds:
        parts = ", ".join(f"{name} {seconds / 60:.1f} min"
                          for name, seconds in sorted(_suite_seconds.items()))
        terminalreporter.write_line(f"time by suite (setup, call and teardown): {parts}")
