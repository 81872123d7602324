"""Produce a micro-batch of predictions to the predictions topic and wait until Kafka has them.

The worker commits input offsets only after this returns, so ``write_batch`` blocks until every
record is acknowledged by all in-sync replicas (``acks=all``) or raises. The idempotent producer
keeps librdkafka's internal retries from duplicating or reordering records; a replay after a crash
can still repeat a whole batch, which consumers dedupe by ``event_id``.

Each record: key = entity key (UTF-8, so one key stays on one partition and in order), value =
``encode(prediction dict)`` shaped like ``schemas/prediction.avsc``, Kafka timestamp = the input
event's ``event_ts``, so downstream windowing sees event time, not processing time.

Speed: delivery reports are requested for failures only (``delivery.report.only.error``), so a
healthy batch costs one ``produce`` call per record and a single ``flush``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from streaminfer.connectors.kafka import make_producer, produce_waiting
from streaminfer.connectors.prediction import PredictionRow, Predictions
from streaminfer.errors import DeliveryError

__all__ = [
    "EncodedPredictions",
    "FailedDelivery",
    "PredictionsDeliveryError",
    "PredictionsTopicSink",
]

Encode = Callable[[dict[str, Any]], bytes]
EncodeMany = Callable[[list[dict[str, Any]]], list[bytes]]
EncodeColumns = Callable[[dict[str, list[Any]], dict[str, Any]], list[bytes]]


#: On top of ``connectors.kafka.PRODUCER_DEFAULTS`` (linger 5 ms, lz4, failure-only reports).
#: Not overridable: without them a batch could be acknowledged yet lost or duplicated.
_REQUIRED = {"enable.idempotence": True, "acks": "all"}


@dataclass(frozen=True, slots=True)
class EncodedPredictions:
    """A batch's predictions as the topic's record values, ready to produce."""

    rows: Sequence[PredictionRow] | Predictions
    keys: list[str]
    values: list[bytes]
    stamps: list[int]


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """One record Kafka did not accept, identified the way the worker logs it."""

    event_id: str
    key: str
    event_ts: int
    error: str


class PredictionsDeliveryError(DeliveryError):
    """Some predictions of a batch were not delivered; offsets must not be committed.

    A :class:`streaminfer.errors.DeliveryError` that also names the failed records (``failed``)
    and how many were still unacknowledged, so the worker's log says which events to look for.
    """

    def __init__(self, topic: str, total: int, failed: list[FailedDelivery], undelivered: int):
        self.topic = topic
        self.failed = failed
        self.undelivered = undelivered
        shown = "; ".join(
            f"event_id={f.event_id!r} key={f.key!r} event_ts={f.event_ts}: {f.error}"
            for f in failed[:5]
        )
        more = f" (+{len(failed) - 5} more)" if len(failed) > 5 else ""
        pending = f"; {undelivered} still unacknowledged at flush timeout" if undelivered else ""
        super().__init__(
            f"{len(failed) + undelivered} of {total} records to topic {topic!r} not delivered: "
            f"{shown or 'none failed outright'}{more}{pending}"
        )


def _identify(
    reports: list[tuple[bytes | None, bytes | None, str]],
    rows: Sequence[PredictionRow],
    values: list[bytes],
) -> list[FailedDelivery]:
    """Map failed (key, value) reports back to their rows: delivery reports carry no opaque
    and no timestamp, and a per-record callback would slow every healthy batch."""
    by_bytes = {(row.key.encode(), value): row for row, value in zip(rows, values, strict=True)}
    failed = []
    for key, value, error in reports:
        row = by_bytes.get((key or b"", value or b""))
        if row is None:
            name = key.decode("utf-8", "replace") if key else ""
            failed.append(FailedDelivery("?", name, -1, error))
        else:
            failed.append(FailedDelivery(row.event_id, row.key, row.event_ts, error))
    return failed


class PredictionsTopicSink:
    """Batch producer for the predictions topic with delivery confirmed before returning."""

    def __init__(
        self,
        producer_config: dict[str, Any],
        topic: str,
        encode: Encode,
        *,
        encode_many: EncodeMany | None = None,
        encode_columns: EncodeColumns | None = None,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._encode = encode
        self._encode_many = encode_many
        self._encode_columns = encode_columns
        self._failed: list[tuple[bytes | None, bytes | None, str]] = []
        self._pending: tuple[Sequence[PredictionRow] | Predictions, list[bytes]] = ([], [])
        self._fatal: KafkaError | None = None
        overrides = {
            **_REQUIRED,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
        }
        self._producer = make_producer(producer_config, **overrides)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:  # only failures are reported (delivery.report.only.error)
            self._failed.append((msg.key(), msg.value(), err.str()))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err

    def write_batch(self, rows: Sequence[PredictionRow] | Predictions) -> None:
        """Produce all ``rows`` and wait for every acknowledgement; raise
        ``PredictionsDeliveryError`` if any record failed or is still pending after
        ``flush_timeout_s``."""
        self.send(rows)
        self.confirm()

    def encode(self, rows: Sequence[PredictionRow] | Predictions) -> EncodedPredictions:
        """Encode the batch's records without touching the producer, so the hot path can do it
        on the lane's thread while the writer thread is busy with the previous batch."""
        if isinstance(rows, Predictions) and self._encode_columns is not None:
            values = self._encode_columns(*rows.columns())
            keys, stamps = rows.keys, rows.event_ts
        else:
            if isinstance(rows, Predictions):
                records, keys, stamps = rows.records(), rows.keys, rows.event_ts
            else:
                records = [row.as_dict() for row in rows]
                keys, stamps = [row.key for row in rows], [row.event_ts for row in rows]
            if self._encode_many is not None:
                values = self._encode_many(records)
            else:
                encode = self._encode
                values = [encode(record) for record in records]
        return EncodedPredictions(rows, keys, values, stamps)

    def send(self, rows: Sequence[PredictionRow] | Predictions | EncodedPredictions) -> None:
        """Queue the batch's records without waiting, so the caller can write Redis meanwhile;
        ``confirm`` then waits for the acknowledgements."""
        if self._fatal is not None:
            # The idempotent producer cannot continue (e.g. fenced); the worker must restart.
            raise KafkaException(self._fatal)
        encoded = rows if isinstance(rows, EncodedPredictions) else self.encode(rows)
        self._failed = []
        produce, topic = self._producer.produce, self.topic
        for key_text, value, ts in zip(encoded.keys, encoded.values, encoded.stamps,
                                       strict=True):
            key = key_text.encode()
            try:
                produce(topic, value, key, timestamp=ts)
            except BufferError:
                produce_waiting(self._producer, topic, value, key, timestamp=ts)
        self._pending = (encoded.rows, encoded.values)

    def confirm(self) -> None:
        """Wait until Kafka acknowledged everything ``send`` queued; raise naming failures."""
        rows, values = self._pending
        self._pending = ([], [])
        undelivered = self._producer.flush(self.flush_timeout_s)
        if self._failed or undelivered:
            listed = rows.rows() if isinstance(rows, Predictions) else rows
            failed = _identify(self._failed, listed, values)
            raise PredictionsDeliveryError(self.topic, len(listed), failed, undelivered)

    def close(self) -> None:
        """Deliver anything still queued (e.g. after an aborted batch)."""
        self._producer.flush(self.flush_timeout_s)

    def __enter__(self) -> PredictionsTopicSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
