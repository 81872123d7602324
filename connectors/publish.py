"""Publishing records to a topic: encode a chunk at once, key by entity, stamp event time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import DeliveryFailures, produce_batch
from streaminfer.connectors.records import now_ms

__all__ = ["PublishReport", "publish_chunks"]


@dataclass
class PublishReport:
    """What a publish run did; ``sent`` counts only records the broker acknowledged."""

    queued: int = 0
    failed: int = 0
    seconds: float = 0.0
    failure_examples: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.queued - self.failed

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class _Pacer:
    """Holds a long-run average of ``rate`` records/s (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.perf_counter()

    def wait(self, done: int) -> None:
        if self.rate > 0:
            ahead = done / self.rate - (time.perf_counter() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def publish_chunks(
    producer: Producer,
    topic: str,
    codec: RecordCodec,
    chunks: Iterable[list[dict[str, Any]]],
    *,
    key_field: str,
    ts_field: str = "ts",
    rate: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
    flush_timeout: float = 60.0,
) -> PublishReport:
    """Send every record of every chunk; returns after the broker acknowledged all of them.

    A record whose ``ts_field`` is ``None`` is stamped with the time it is sent. With ``rate``
    the chunks are cut into slices of about 10 ms worth of records to keep the pace smooth.
    """
    report = PublishReport()
    failures = DeliveryFailures()
    pacer = _Pacer(rate)
    slice_size = max(1, int(rate / 100)) if rate > 0 else None
    started = time.perf_counter()
    for chunk in chunks:
        step = slice_size or max(1, len(chunk))
        for lo in range(0, len(chunk), step):
            part = chunk[lo : lo + step]
            stamp = now_ms()
            for record in part:
                if record.get(ts_field) is None:
                    record[ts_field] = stamp
            values = codec.encode_many(part)
            items = (
                (str(r[key_field]).encode(), v, r[ts_field])
                for r, v in zip(part, values, strict=True)
            )
            report.queued += produce_batch(producer, topic, items, failures)
            if on_progress:
                on_progress(len(part))
            pacer.wait(report.queued)
    remaining = producer.flush(flush_timeout)
    report.seconds = time.perf_counter() - started
    report.failed = failures.count + remaining
    report.failure_examples = failures.examples
    if remaining:
        report.failure_examples.append(f"{remaining} records still unsent after {flush_timeout}s")
    return report
