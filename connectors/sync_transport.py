"""The parameter sync's log on Kafka: a topic with one partition per shard, read whole by all.

Why Kafka and not a parameter server: the topic is durable and replayable, so a late or
restarted worker catches up by reading from its start position, and there is no server of our
own to run. Every worker ``assign``s all partitions (no consumer group: each one needs every
message) and reads without blocking. :class:`KafkaTransport` satisfies the ``Transport``
Protocol of ``models.sync`` structurally, so the sync algorithm never imports Kafka.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from streaminfer.connectors.admin import ensure_topics
from streaminfer.connectors.kafka import (
    DeliveryFailures,
    make_consumer,
    make_producer,
    produce_waiting,
)
from streaminfer.errors import ConfigError

__all__ = ["KafkaTransport", "SyncRecord", "ensure_sync_topic"]

RETENTION_MS = 30 * 24 * 3600 * 1000  # rounds must stay replayable for late starters
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SyncRecord:
    """One record of the sync topic, with its headers decoded to strings."""

    partition: int
    offset: int
    headers: dict[str, str]
    value: bytes


def ensure_sync_topic(config: dict[str, Any], topic: str, partitions: int, *,
                      replication: int = -1, min_insync_replicas: int | None = None) -> None:
    """Create the sync topic with ``partitions`` partitions if missing; refuse another count.
    ``replication=-1``: the broker's default (workers pass their settings' policy)."""
    admin_config = {k: v for k, v in config.items() if not k.startswith(("enable.", "acks"))}
    (status,) = ensure_topics(
        admin_config, {topic: partitions}, replication=replication, timeout=15.0,
        min_insync_replicas=min_insync_replicas,
        configs={topic: {
            "cleanup.policy": "delete",
            "retention.ms": str(RETENTION_MS),
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
        }},
    )
    if status.mismatch:
        raise ConfigError(
            f"sync topic {topic!r} must have {partitions} partitions (one per shard), "
            f"found {status.partitions} partitions"
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
        topic_policy: dict[str, int] | None = None,
    ) -> None:
        ensure_sync_topic(kafka_config, topic, partitions, **(topic_policy or {}))
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

    def receive(self, max_messages: int) -> list[SyncRecord]:
        self._producer.poll(0)
        out: list[SyncRecord] = []
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
                out.append(SyncRecord(part, offset, headers, msg.value() or b""))
                self._next[part] = offset + 1
        return out

    def positions(self) -> dict[int, int]:
        return {p: (off if off >= 0 else 0) for p, off in self._next.items()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.flush(10)
        self._consumer.close()
