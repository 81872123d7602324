"""``streaminfer topics create|list`` and ``connectors.admin`` against the real broker, plus the
start-up config check every command shares."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource
from servers import Services

from streaminfer.connectors.admin import ensure_topics, list_topics
from streaminfer.errors import ConfigError
from streaminfer.streams.cli import main


def _cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def fresh_names(services: Services) -> Iterator[Callable[[], str]]:
    """Unique topic names that do not exist yet; whatever got created is deleted afterwards."""
    names: list[str] = []

    def make() -> str:
        names.append(f"cli-{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield make
    admin = AdminClient({"bootstrap.servers": services.bootstrap, "log_level": 0})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [name for name in names if name in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=10).values():
            future.result()


def test_create_twice_then_list_shows_partitions(
    services: Services, fresh_names: Callable[[], str]
) -> None:
    a, b = fresh_names(), fresh_names()

    first = _cli("--bootstrap", services.bootstrap, "topics", "create", a, b, "--partitions", "3")
    again = _cli("--bootstrap", services.bootstrap, "topics", "create", a, "--partitions", "3")
    listed = _cli("--bootstrap", services.bootstrap, "topics", "list")

    assert first.exit_code == 0, first.output
    assert f"{a}: created with 3 partition(s)" in first.output
    assert f"{b}: created with 3 partition(s)" in first.output
    assert again.exit_code == 0, again.output
    assert f"{a}: exists with 3 partition(s)" in again.output
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert f"{a}\t3" in lines and f"{b}\t3" in lines
    assert not any(line.startswith("__") for line in lines)


def test_existing_topic_with_other_partition_count_is_reported_not_changed(
    services: Services, new_topic: Callable[..., str]
) -> None:
    name = new_topic(partitions=2)

    result = _cli("--bootstrap", services.bootstrap, "topics", "create", name, "-p", "5")

    assert result.exit_code == 1
    assert f"{name}: exists with 2 partition(s), not the 5 requested" in result.output
    counts = {t.name: t.partitions for t in list_topics({"bootstrap.servers": services.bootstrap})}
    assert counts[name] == 2


def test_ensure_topics_reports_created_then_existing(
    services: Services, fresh_names: Callable[[], str]
) -> None:
    config = {"bootstrap.servers": services.bootstrap}
    wanted = {fresh_names(): 1, fresh_names(): 4}

    first = ensure_topics(config, wanted)
    second = ensure_topics(config, wanted)

    assert [(s.name, s.partitions, s.created) for s in first] == [
        (name, n, True) for name, n in wanted.items()
    ]
    assert [(s.name, s.partitions, s.created, s.mismatch) for s in second] == [
        (name, n, False, False) for name, n in wanted.items()
    ]


def test_new_topic_fixture_gives_distinct_visible_topics(
    services: Services, new_topic: Callable[..., str]
) -> None:
    one, two = new_topic(), new_topic(partitions=3, prefix="events")

    counts = {t.name: t.partitions for t in list_topics({"bootstrap.servers": services.bootstrap})}

    assert one != two and one.startswith("t-") and two.startswith("events-")
    assert counts[one] == 1 and counts[two] == 3


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        ((), {"STREAMINFER_BATCH_MAX_RECORDS": "0"}, "batch_max_records"),
        (("--redis-url", "http://x"), {}, "redis_url"),
        (("-X", "bootstrap.servers=elsewhere:9092"), {}, "kafka_properties"),
        ((), {"STREAMINFER_TOPIC_MIN_INSYNC_REPLICAS": "2"}, "settings"),  # > replication 1
    ],
)
def test_bad_config_stops_the_command_naming_the_field(
    args: tuple[str, ...], env: dict[str, str | None], field: str
) -> None:
    # An unreachable broker: a command that got past the config check would fail differently.
    result = _cli("--bootstrap", "127.0.0.1:1", *args, "topics", "list", env=env)

    assert result.exit_code == 2
    assert f"invalid configuration: {field}:" in result.output


def topic_config(bootstrap: str, topic: str, key: str) -> tuple[str, bool]:
    """A topic's config value and whether it was set on the topic (not a broker default)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entry = admin.describe_configs([resource])[resource].result(10)[key]
    return entry.value, entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_replication_and_min_insync_come_from_settings(
    services: Services, fresh_names: Callable[[], str]
) -> None:
    name = fresh_names()
    too_many = _cli("--bootstrap", services.bootstrap, "topics", "create", name, "-r", "3",
                    "--min-insync-replicas", "2")
    made = _cli("--bootstrap", services.bootstrap, "topics", "create", name,
                env={"STREAMINFER_TOPIC_MIN_INSYNC_REPLICAS": "1"})

    # one broker: replication 3 is refused by the broker, naming the topic
    assert too_many.exit_code == 1
    assert name in too_many.output and "replication" in too_many.output.lower(), too_many.output
    assert made.exit_code == 0, made.output
    assert topic_config(services.bootstrap, name, "min.insync.replicas") == ("1", True)


def test_min_insync_above_replication_is_refused_before_the_broker() -> None:
    # an unreachable broker: the check comes before any request
    with pytest.raises(ConfigError, match=re.escape(
            "min.insync.replicas must be between 1 and the replication factor (1), got 2")):
        ensure_topics({"bootstrap.servers": "127.0.0.1:1"}, {"x": 1}, min_insync_replicas=2)
