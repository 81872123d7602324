"""confluent-kafka clients with streaminfer's defaults: durable, idempotent, fast in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer

__all__ = ["DeliveryFailures", "make_consumer", "make_producer", "produce_batch", "produce_waiting"]

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,  # implies acks=all; no duplicates from internal retries
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "delivery.report.only.error": True,  # no per-record Python callback on the happy path
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,  # streaminfer commits after sinks confirmed a batch
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": 20,
    "queued.max.messages.kbytes": 65536,
    # Once the local queue holds queued.min.messages (100,000), librdkafka waits this long
    # before fetching those partitions again; at its default (1 s) a worker catching up on
    # two topics (events and labels) found its queue empty every few batches and idled:
    # in bench/sync.py, reading the labels alone ran at 0.67x of events only, 0.83x with this.
    "fetch.queue.backoff.ms": 10,
}


class DeliveryFailures:
    """Counts and remembers records the broker did not accept (delivery reports)."""

    def __init__(self, keep: int = 10) -> None:
        self.count = 0
        self.examples: list[str] = []
        self._keep = keep

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self.count += 1
        if len(self.examples) < self._keep:
            key = msg.key()
            self.examples.append(f"{msg.topic()} key={key!r}: {err.str()}")


def make_producer(config: dict[str, Any], **overrides: Any) -> Producer:
    """A producer for ``config`` (bootstrap + passthrough) with the defaults above."""
    return Producer({**PRODUCER_DEFAULTS, **config, **overrides})


def make_consumer(config: dict[str, Any], group: str, **overrides: Any) -> Consumer:
    return Consumer({**CONSUMER_DEFAULTS, **config, "group.id": group, **overrides})


def produce_waiting(producer: Producer, topic: str, value: bytes | None, key: bytes | None,
                    **kwargs: Any) -> None:
    """``producer.produce`` that waits for room in librdkafka's local queue instead of failing
    with ``BufferError`` (it serves the producer meanwhile, so queued records get sent)."""
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def produce_batch(
    producer: Producer,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes, int | None]],
    on_delivery: Callable[[KafkaError | None, Message], None],
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    """Queue ``(key, value, timestamp_ms)`` items, waiting for queue room instead of failing."""
    count = 0
    produce = producer.produce
    for key, value, ts in items:
        try:
            if ts is None:
                produce(topic, value, key, on_delivery=on_delivery, headers=headers)
            else:
                produce(topic, value, key, timestamp=ts, on_delivery=on_delivery,
                        headers=headers)
        except BufferError:
            stamp = {} if ts is None else {"timestamp": ts}
            produce_waiting(producer, topic, value, key, on_delivery=on_delivery,
                            headers=headers, **stamp)
        count += 1
    producer.poll(0)
    return count
