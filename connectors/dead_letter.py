"""Dead-letter queue: park records the pipeline cannot process, byte for byte, and move on.

A poison record must neither stop a partition nor vanish. The DLQ record keeps the *original*
key and value bytes, so fixing the cause and replaying it into the source topic (with any
client that copies key and value bytes as they are) re-runs exactly what failed. Where it came from
and why travel as headers (the same facts as ``schemas/dead_letter.avsc``)::

    streaminfer.reason            human-readable: which field, what was expected
    streaminfer.error_type        stable class: decode, validation, model, ...
    streaminfer.source_topic      topic the record was read from
    streaminfer.source_partition  its partition (decimal text)
    streaminfer.source_offset     its offset (decimal text)
    streaminfer.failed_ts         when it failed, epoch ms (decimal text); also the record timestamp
    streaminfer.truncated         only on a record too large to park whole: original sizes

One exception to "byte for byte": a key over ``MAX_KEY_BYTES`` or a value over
``MAX_VALUE_BYTES`` is cut to that size (header ``streaminfer.truncated``), because a dead
letter at the broker's message size limit would be refused, and a lane that cannot park a
poison record could never commit past it.

The worker calls ``flush()`` before committing the batch's offsets; if it raises, the batch
must not be committed (a replay will dead-letter the records again, which is harmless).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message

from streaminfer.connectors.kafka import make_producer, produce_waiting
from streaminfer.errors import DeadLetterError

__all__ = [
    "DECODE",
    "MODEL",
    "VALIDATION",
    "DeadLetterWriter",
]

#: Error classes used by streaminfer itself; any short stable string is accepted.
DECODE = "decode"
VALIDATION = "validation"
MODEL = "model"

HEADER_PREFIX = "streaminfer."
#: dead letters stay well under the broker's default 1 MB message limit (headers included)
MAX_VALUE_BYTES = 512 * 1024
MAX_KEY_BYTES = 16 * 1024


class DeadLetterWriter:
    """Produces dead letters to ``dlq_topic_for(source_topic)`` and counts them by error type."""

    def __init__(
        self,
        producer_config: dict[str, Any],
        dlq_topic_for: Callable[[str], str] | None = None,
        *,
        suffix: str = ".dlq",
        flush_timeout_s: float = 30.0,
    ) -> None:
        self._topic_for = dlq_topic_for or (lambda topic: f"{topic}{suffix}")
        self.flush_timeout_s = flush_timeout_s
        #: Dead letters queued so far, per error type (``flush`` confirms their delivery).
        self.sent: Counter[str] = Counter()
        self._failed: list[str] = []
        self._producer = make_producer(
            producer_config,
            **{
                "enable.idempotence": True,
                "acks": "all",
                "delivery.report.only.error": True,
            },
        )

    def dlq_topic(self, source_topic: str) -> str:
        """Where dead letters from ``source_topic`` go."""
        return self._topic_for(source_topic)

    def send(
        self,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        error_type: str,
    ) -> None:
        """Queue one dead letter carrying the raw ``key``/``value``; ``flush`` confirms it."""
        failed_ts = time.time_ns() // 1_000_000
        headers = [
            (HEADER_PREFIX + "reason", reason.encode()),
            (HEADER_PREFIX + "error_type", error_type.encode()),
            (HEADER_PREFIX + "source_topic", source_topic.encode()),
            (HEADER_PREFIX + "source_partition", str(partition).encode()),
            (HEADER_PREFIX + "source_offset", str(offset).encode()),
            (HEADER_PREFIX + "failed_ts", str(failed_ts).encode()),
        ]
        if (value is not None and len(value) > MAX_VALUE_BYTES) or (
                key is not None and len(key) > MAX_KEY_BYTES):
            sizes = (f"key {0 if key is None else len(key)} bytes, value "
                     f"{0 if value is None else len(value)} bytes; cut to at most "
                     f"{MAX_KEY_BYTES} and {MAX_VALUE_BYTES}")
            headers.append((HEADER_PREFIX + "truncated", sizes.encode()))
            key = None if key is None else key[:MAX_KEY_BYTES]
            value = None if value is None else value[:MAX_VALUE_BYTES]
        topic = self._topic_for(source_topic)
        produce_waiting(self._producer, topic, value, key, timestamp=failed_ts, headers=headers,
                        on_delivery=self._reporter(f"{source_topic}[{partition}]@{offset}"))
        self.sent[error_type] += 1

    def _reporter(self, source: str) -> Callable[[KafkaError | None, Message], None]:
        """A delivery callback that knows its source record (DR messages lose their headers)."""

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._failed.append(f"{source} -> {msg.topic()}: {err.str()}")

        return on_delivery

    def flush(self) -> None:
        """Wait until every queued dead letter is acknowledged; raise ``DeadLetterError`` naming
        the source records that were not (failures are reported once, then forgotten)."""
        pending = self._producer.flush(self.flush_timeout_s)
        failed, self._failed = self._failed, []
        if failed or pending:
            shown = "; ".join(failed[:5]) or "none failed outright"
            if len(failed) > 5:
                shown += f" (+{len(failed) - 5} more)"
            if pending:
                shown += f"; {pending} still unacknowledged after {self.flush_timeout_s}s"
            raise DeadLetterError(f"{len(failed) + pending} dead letters not delivered: {shown}")
