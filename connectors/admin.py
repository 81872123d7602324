"""Topic administration with confluent-kafka's AdminClient: idempotent create, list.

Faust workers only subscribe to topics that exist when they join the group, and a topic that the
broker auto-creates on first produce gets the broker's default partition count; so streaminfer
creates its topics up front, with the partition count the user chose, and says so when an
existing topic disagrees.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streaminfer.errors import ConfigError, StreaminferError

__all__ = [
    "AdminError",
    "TopicInfo",
    "TopicStatus",
    "check_credentials",
    "ensure_topics",
    "list_topics",
]


class AdminError(StreaminferError, RuntimeError):
    """The broker refused or did not answer an admin request; the message names the topic.

    Not a :class:`ConfigError`: the request may be fine and the broker down or slow.
    """


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the broker's metadata reports it."""

    name: str
    partitions: int


@dataclass(frozen=True)
class TopicStatus:
    """Outcome of an idempotent create: created now, or already there (maybe with other counts)."""

    name: str
    partitions: int
    requested_partitions: int
    created: bool

    @property
    def mismatch(self) -> bool:
        """The topic existed with a partition count other than the one asked for."""
        return self.partitions != self.requested_partitions

    def describe(self) -> str:
        if self.created:
            return f"{self.name}: created with {self.partitions} partition(s)"
        if self.mismatch:
            return (
                f"{self.name}: exists with {self.partitions} partition(s), "
                f"not the {self.requested_partitions} requested"
            )
        return f"{self.name}: exists with {self.partitions} partition(s)"


def _admin(config: Mapping[str, Any]) -> AdminClient:
    # librdkafka logs every reconnect attempt to stderr; our errors already say what failed.
    return AdminClient({"log_level": 2, **config})


def _where(config: Mapping[str, Any]) -> str:
    return f"Kafka at {config.get('bootstrap.servers', '?')}"


#: errors librdkafka reports when the brokers refuse who we are or the TLS handshake fails
_REFUSALS = {KafkaError._AUTHENTICATION: "refused the SASL credentials",
             KafkaError.SASL_AUTHENTICATION_FAILED: "refused the SASL credentials",
             KafkaError._SSL: "TLS failed"}


def check_credentials(config: Mapping[str, Any], timeout: float = 15.0) -> None:
    """Raise :class:`ConfigError` now if the brokers refuse ``config``'s login or TLS.

    librdkafka retries a refused login for ever, so a wrong password would otherwise look like
    an unreachable cluster: a worker that never joins, a ``produce`` that hangs. A broker that
    does not answer at all within ``timeout`` is left to the clients' own retries.
    """
    errors: list[KafkaError] = []
    admin = AdminClient({**config, "log_level": 0, "error_cb": errors.append})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException:
            admin.poll(0)
        for error in errors:
            if error.code() in _REFUSALS:
                user = config.get("sasl.username")
                who = f" (user {user!r})" if user else ""
                raise ConfigError(f"{_where(config)} {_REFUSALS[error.code()]}{who}: "
                                  f"{error.str()}")


def _partition_counts(admin: AdminClient, timeout: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        raise AdminError(f"cannot read topic metadata: {error.str()}") from None
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }


def ensure_topics(
    config: Mapping[str, Any],
    topics: Mapping[str, int],
    replication: int = 1,
    timeout: float = 30.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    min_insync_replicas: int | None = None,
) -> list[TopicStatus]:
    """Create each ``name -> partitions`` topic that is missing; never alters an existing one.

    The one place streaminfer creates topics (workers, CLI, parameter sync, tests, benches).
    ``configs`` gives topic configs by name (e.g. ``cleanup.policy=compact`` for changelogs);
    ``replication=-1`` takes the broker's default replication factor; ``min_insync_replicas``
    sets ``min.insync.replicas`` on every topic created (``None``: the broker's default), so a
    write acknowledged with ``acks=all`` is on that many replicas.

    Returns once every topic is visible in the broker's metadata with all its partitions, so a
    producer or consumer started next sees it.
    """
    for name, partitions in topics.items():
        if not name:
            raise ConfigError("topic name must not be empty")
        if partitions < 1:
            raise ConfigError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
    if replication < 1 and replication != -1:
        raise ConfigError(
            f"replication must be >= 1 (or -1: the broker's default), got {replication}"
        )
    if min_insync_replicas is not None and (
        min_insync_replicas < 1 or (replication != -1 and min_insync_replicas > replication)
    ):
        raise ConfigError(
            f"min.insync.replicas must be between 1 and the replication factor ({replication}), "
            f"got {min_insync_replicas}: no write could be acknowledged"
        )
    if not topics:
        return []
    insync = {} if min_insync_replicas is None else {
        "min.insync.replicas": str(min_insync_replicas)}
    admin = _admin(config)
    futures = admin.create_topics(
        [NewTopic(name, partitions, replication,
                  config={**insync, **(configs or {}).get(name, {})})
         for name, partitions in topics.items()],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created: set[str] = set()
    for name, future in futures.items():
        try:
            future.result()
            created.add(name)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise AdminError(
                    f"{_where(config)}: cannot create topic {name!r}: {error.str()}"
                ) from None
    counts = _wait_visible(admin, topics, created, timeout)
    return [
        TopicStatus(name, counts[name], partitions, name in created)
        for name, partitions in topics.items()
    ]


def _wait_visible(
    admin: AdminClient, topics: Mapping[str, int], created: set[str], timeout: float
) -> dict[str, int]:
    """Metadata lags creation briefly; poll until each topic (and all it was created with) shows."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _partition_counts(admin, timeout=max(1.0, deadline - time.monotonic()))
        pending = [
            name
            for name, partitions in topics.items()
            if name not in counts or (name in created and counts[name] < partitions)
        ]
        if not pending:
            return counts
        if time.monotonic() >= deadline:
            raise AdminError(f"topics {pending} not visible in metadata after {timeout:.0f}s")
        time.sleep(0.1)


def list_topics(
    config: Mapping[str, Any], include_internal: bool = False, timeout: float = 10.0
) -> list[TopicInfo]:
    """Topics and their partition counts, sorted by name; ``__*`` internals only if asked."""
    try:
        counts = _partition_counts(_admin(config), timeout)
    except AdminError as exc:
        raise AdminError(f"{_where(config)}: {exc}") from None
    return [
        TopicInfo(name, counts[name])
        for name in sorted(counts)
        if include_internal or not name.startswith("__")
    ]

