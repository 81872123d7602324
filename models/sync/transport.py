"""The sync's log: a Kafka topic with one partition per shard, read whole by every worker.

Why Kafka and not a parameter server: the topic is durable and replayable, so a late or
restarted worker catches up by reading from its start position, and there is no server of our
own to run. Every worker ``assign``s all partitions (no consumer group: each one needs every
message) and reads without blocking. :class:`MemoryLog` is the same contract in memory, for
unit tests of the protocol logic.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streaminfer.connectors.kafka import (
    DeliveryFailures,
    make_consumer,
    make_producer,
    produce_waiting,
)

__all__ = ["KafkaTransport", "MemoryLog", "SyncMessage", "Transport", "ensure_topic"]

RETENTION_MS = 30 * 24 * 3600 * 1000  # rounds must stay replayable for late starters
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SyncMessage:
    """One record of the sync topic, with its headers decoded to strings."""

    partition: int
    offset: int
    headers: dict[str, str]
    value: bytes


class Transport(Protocol):
    partitions: int

    def send(self, partition: int, value: bytes, headers: dict[str, str]) -> None: ...

    def receive(self, max_messages: int) -> list[SyncMessage]:
        """What has arrived, without waiting."""
        ...

    def positions(self) -> dict[int, int]:
        """Next offset to read, per partition."""
        ...

    def close(self) -> None: ...


class MemoryLog:
    """An in-memory partitioned log; ``transport()`` gives one worker's reader/writer on it."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.records: list[list[tuple[dict[str, str], bytes]]] = [[] for _ in range(partitions)]

    def transport(self, start: dict[int, int] | None = None) -> _MemoryTransport:
        return _MemoryTransport(self, dict(start or {}))


class _MemoryTransport:
    def __init__(self, log: MemoryLog, start: dict[int, int]) -> None:
        self.log, self.partitions = log, log.partitions
        self._next = {p: start.get(p, 0) for p in range(log.partitions)}

    def send(self, partition: int, value: bytes, headers: dict[str, str]) -> None:
        self.log.records[partition].append((dict(headers), value))

    def receive(self, max_messages: int) -> list[SyncMessage]:
        out: list[SyncMessage] = []
        for p in range(self.partitions):
            records = self.log.records[p]
            while self._next[p] < len(records) and len(out) < max_messages:
                headers, value = records[self._next[p]]
                out.append(SyncMessage(p, self._next[p], headers, value))
                self._next[p] += 1
        return out

    def positions(self) -> dict[int, int]:
        return dict(self._next)

    def close(self) -> None:
        return None


def ensure_topic(config: dict[str, Any], topic: str, partitions: int) -> None:
    """Create the sync topic with ``partitions`` partitions if missing; refuse another count."""
    admin = AdminClient({k: v for k, v in config.items() if not k.startswith(("enable.", "acks"))})
    new = NewTopic(
        topic,
        num_partitions=partitions,
        replication_factor=-1,  # the broker's default
        config={
            "cleanup.policy": "delete",
            "retention.ms": str(RETENTION_MS),
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
        },
    )
    future = admin.create_topics([new], operation_timeout=10)[topic]
    try:
        future.result(timeout=15)
    except KafkaException as exc:
        if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS
            raise
    deadline = time.monotonic() + 15.0
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    while meta.error is not None and time.monotonic() < deadline:
        time.sleep(0.1)  # a new topic's metadata reaches the broker's cache a moment later
        meta = admin.list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None or len(meta.partitions) != partitions:
        found = "an error" if meta.error is not None else f"{len(meta.partitions)} partitions"
        raise ValueError(
            f"sync topic {topic!r} must have {partitions} partitions (one per shard), "
            f"found {found}"
        )


class KafkaTransport:
    """Idempotent producer (acks=all) plus a group-less consumer assigned every partition."""

    def __init__(
        self,
        kafka_config: dict[str, Any],
        topic: str,
        partitions: int,
        *,
        client_id: str,
        start: dict[int, int] | None = None,
    ) -> None:
        ensure_topic(kafka_config, topic, partitions)
        self.topic, self.partitions = topic, partitions
        self.failures = DeliveryFailures()
        self._producer = make_producer(
            kafka_config, **{"client.id": client_id, "linger.ms": 1,
                             "message.max.bytes": MAX_MESSAGE_BYTES,
                             "delivery.report.only.error": True},
        )
        self._consumer = make_consumer(
            kafka_config, f"streaminfer-sync-{client_id}",
            **{"client.id": client_id, "fetch.wait.max.ms": 10},
        )
        start = start or {}
        self._next = {p: int(start.get(p, OFFSET_BEGINNING)) for p in range(partitions)}
        self._consumer.assign([TopicPartition(topic, p, off) for p, off in self._next.items()])

    def send(self, partition: int, value: bytes, headers: dict[str, str]) -> None:
        encoded = [(k, v.encode("utf-8")) for k, v in headers.items()]
        produce_waiting(self._producer, self.topic, value, None, partition=partition,
                        headers=encoded, on_delivery=self.failures)
        self._producer.poll(0)

    def receive(self, max_messages: int) -> list[SyncMessage]:
        self._producer.poll(0)
        out: list[SyncMessage] = []
        while len(out) < max_messages:
            batch = self._consumer.consume(min(500, max_messages - len(out)), timeout=0)
            if not batch:
                break
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue  # transient (e.g. a broker reconnect); librdkafka retries
                headers = {k: (v or b"").decode("utf-8") for k, v in (msg.headers() or [])}
                part, offset = msg.partition(), msg.offset()
                out.append(SyncMessage(part, offset, headers, msg.value() or b""))
                self._next[part] = offset + 1
        return out

    def positions(self) -> dict[int, int]:
        return {p: (off if off >= 0 else 0) for p, off in self._next.items()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.flush(10)
        self._consumer.close()
