"""Micro-batches from a Kafka consumer, with a batch size that adapts to a latency target.

A batch closes on whichever comes first: ``max_records`` (the adaptive limit), ``max_wait``
since the batch started, ``max_bytes`` of record values (soft: checked between polls, which
are sized by the average record so a batch overshoots by little), or a ``gap`` with no new
record. Records come in fetches: a fetch's records are queued within microseconds of each
other, and the next fetch follows the next produce request, often tens of ms later. Waiting on
after a fetch until ``max_wait`` would only delay the batch, so it closes after 2 ms without a
record; input that keeps trickling in still batches for up to ``max_wait``.

The limit follows AIMD, as in Clipper and Triton's dynamic batcher: while a batch's service
time (decode -> infer -> sinks -> commit) stays under half the latency target, a full batch
grows the limit by ``step``; a batch over it halves the limit. Half, because the other half of
the target is the budget for waiting in the batch and in Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message

__all__ = ["AdaptiveLimit", "Batcher"]


@dataclass
class AdaptiveLimit:
    """AIMD batch-size limit driven by measured batch service time."""

    target_ms: float
    maximum: int
    minimum: int = 16
    step: int = 64
    current: int = field(init=False)

    def __post_init__(self) -> None:
        self.minimum = min(self.minimum, self.maximum)
        self.current = max(self.minimum, min(self.maximum, 256))

    def observe(self, batch_size: int, service_ms: float) -> None:
        if service_ms > self.target_ms / 2:
            self.current = max(self.minimum, self.current // 2)
        elif batch_size >= self.current:
            self.current = min(self.maximum, self.current + self.step)


@dataclass
class Batcher:
    """Pulls micro-batches of messages from ``consumer``; error events are returned apart."""

    consumer: Consumer
    limit: AdaptiveLimit
    max_wait_s: float
    max_bytes: int
    idle_s: float = 0.01
    gap_s: float = 0.002
    errors: int = 0
    _avg_size: float = 256.0

    def next_batch(self) -> list[Message]:
        """Up to ``limit.current`` messages; empty when nothing arrived within ``idle_s``.

        Waits for the first record, takes whatever else is already queued, then keeps
        collecting while records keep coming (no ``gap`` without one), for at most
        ``max_wait`` after that first record (like Triton's queue delay) and while the batch
        is under its limits. ``max_wait`` 0 never waits for more: a batch is what was queued,
        and under load that grows by itself.
        """
        batch: list[Message] = []
        size = 0
        deadline = 0.0
        timeout = self.idle_s
        want = 1
        while len(batch) < self.limit.current and size < self.max_bytes:
            got = self.consumer.consume(want, timeout)
            for msg in got:
                if msg.error():
                    self.errors += 1
                    continue
                batch.append(msg)
                size += len(msg.value() or b"")
            if not batch:
                return batch
            if not deadline:
                deadline = time.monotonic() + self.max_wait_s
                timeout = 0.0  # first, what is queued already
            elif not got and timeout > 0:
                break  # a whole gap without a record: the fetch is over
            else:
                timeout = min(self.gap_s, deadline - time.monotonic())
                if timeout <= 0:
                    break
            room = int((self.max_bytes - size) / self._avg_size) + 1
            want = max(1, min(self.limit.current - len(batch), room))
        if batch:
            self._avg_size = 0.9 * self._avg_size + 0.1 * (size / len(batch))
        return batch
