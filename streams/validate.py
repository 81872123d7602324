"""From decoded Kafka messages to column batches a model takes, rejecting bad records.

Every rejection says which record (it keeps the message) and why (field and expectation),
so the worker can route it to the dead-letter topic and go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Message
from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.records import now_ms

from streaminfer.errors import DecodeError, InvalidRecord

__all__ = [
    "EventBatch",
    "FeedbackBatch",
    "RatingBatch",
    "Rejected",
    "decode_events",
    "decode_feedback",
    "decode_ratings",
]

MIN_TS = 946_684_800_000  # 2000-01-01: older event times are treated as corrupt
MAX_FUTURE_MS = 24 * 3600 * 1000  # event times more than a day ahead are treated as corrupt


@dataclass(frozen=True)
class Rejected:
    """A message that cannot be processed, and why."""

    msg: Message
    reason: str
    error_type: str  # decode | validation | model


@dataclass
class EventBatch:
    """Columns of valid classifier events; ``messages[i]`` is the source of row ``i``."""

    messages: list[Message]
    event_ids: list[str]
    keys: list[str]
    ts: np.ndarray  # int64 ms
    features: np.ndarray  # float32 (n, num_features)

    def __len__(self) -> int:
        return len(self.event_ids)

    def take(self, index: Sequence[int]) -> EventBatch:
        idx = list(index)
        return EventBatch([self.messages[i] for i in idx], [self.event_ids[i] for i in idx],
                          [self.keys[i] for i in idx], self.ts[idx], self.features[idx])


@dataclass
class RatingBatch:
    """Columns of valid rating events for the recommender."""

    messages: list[Message]
    event_ids: list[str]
    users: list[str]
    items: list[str]
    ts: np.ndarray
    ratings: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.event_ids)

    @property
    def keys(self) -> list[str]:
        return self.users

    def take(self, index: Sequence[int]) -> RatingBatch:
        idx = list(index)
        return RatingBatch([self.messages[i] for i in idx], [self.event_ids[i] for i in idx],
                           [self.users[i] for i in idx], [self.items[i] for i in idx],
                           self.ts[idx], self.ratings[idx])


def _check_ts(value: Any, now: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        if isinstance(value, float) and math.isfinite(value):
            value = int(value)
        else:
            raise InvalidRecord("ts", f"expected epoch milliseconds, got {value!r}")
    if value < MIN_TS or value > now + MAX_FUTURE_MS:
        raise InvalidRecord("ts", f"event time {value} is before 2000 or more than a day ahead")
    return value


def _check_str(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise InvalidRecord(name, f"expected a non-empty string, got {value!r}")
    return value


Row = tuple[Any, ...]
Check = Callable[[dict[str, Any], bool, int], Row]


def _rows(messages: Sequence[Message], codec: RecordCodec, check: Check
          ) -> tuple[list[Message], list[Row], list[Rejected]]:
    """Decode each message and ``check`` it into a row tuple; rejects say why, in order.

    ``check(record, typed, now)`` gets ``typed=True`` when the record was read with exactly
    the reader schema (field types are then guaranteed; only values need checking).
    """
    now = now_ms()
    kept: list[Message] = []
    rows: list[Row] = []
    rejected: list[Rejected] = []
    for msg in messages:
        try:
            record, typed = codec.decode_typed(msg.value())
            row = check(record, typed, now)
        except DecodeError as exc:
            rejected.append(Rejected(msg, str(exc), "decode"))
            continue
        except InvalidRecord as exc:
            rejected.append(Rejected(msg, str(exc), "validation"))
            continue
        kept.append(msg)
        rows.append(row)
    return kept, rows, rejected


def _columns(rows: list[Row], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def decode_events(
    messages: Sequence[Message], codec: RecordCodec, num_features: int
) -> tuple[EventBatch, list[Rejected]]:
    """Valid classifier events as columns, and the rejected rest."""

    def check(record: dict[str, Any], typed: bool, now: int) -> Row:
        features = record.get("features")
        if typed:  # the fast common case: one combined test, details only on failure
            event_id, key, ts = record["event_id"], record["key"], record["ts"]
            if (len(features) == num_features and event_id and key
                    and MIN_TS <= ts <= now + MAX_FUTURE_MS):
                return event_id, key, ts, features
        if not isinstance(features, list) or len(features) != num_features:
            got = len(features) if isinstance(features, list) else type(features).__name__
            raise InvalidRecord("features", f"expected {num_features} numbers, got {got}")
        return (_check_str(record, "event_id"), _check_str(record, "key"),
                _check_ts(record.get("ts"), now), features)

    kept, rows, rejected = _rows(messages, codec, check)
    ids, keys, ts, features = _columns(rows, 4)
    try:
        matrix = np.asarray(features, dtype=np.float32).reshape(len(rows), num_features)
    except (TypeError, ValueError):  # a non-number inside some feature list: find it row by row
        matrix = np.zeros((len(rows), num_features), np.float32)
        bad = set()
        for i, row in enumerate(features):
            try:
                matrix[i] = np.asarray(row, dtype=np.float32)
            except (TypeError, ValueError):
                bad.add(i)
        for i in sorted(bad):
            rejected.append(Rejected(kept[i], "field 'features': expected numbers", "validation"))
        batch = EventBatch(kept, ids, keys, np.asarray(ts, np.int64), matrix)
        batch = batch.take([i for i in range(len(rows)) if i not in bad])
        return _drop_non_finite(batch, rejected), rejected
    batch = EventBatch(kept, ids, keys, np.asarray(ts, np.int64), matrix)
    return _drop_non_finite(batch, rejected), rejected


def _drop_non_finite(batch: EventBatch, rejected: list[Rejected]) -> EventBatch:
    finite = np.isfinite(batch.features).all(axis=1)
    if finite.all():
        return batch
    for i in np.flatnonzero(~finite).tolist():
        rejected.append(
            Rejected(batch.messages[i], "field 'features': NaN or infinite value", "validation")
        )
    return batch.take(np.flatnonzero(finite).tolist())


def _number(record: dict[str, Any], name: str, low: float = -math.inf,
            high: float = math.inf) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRecord(name, f"expected a finite number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRecord(name, f"expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def decode_ratings(
    messages: Sequence[Message], codec: RecordCodec
) -> tuple[RatingBatch, list[Rejected]]:
    """Valid rating events as columns, and the rejected rest."""

    def check(record: dict[str, Any], typed: bool, now: int) -> Row:
        return (_check_str(record, "event_id"), _check_str(record, "user"),
                _check_str(record, "item"), _check_ts(record.get("ts"), now),
                _number(record, "rating"))

    kept, rows, rejected = _rows(messages, codec, check)
    ids, users, items, ts, ratings = _columns(rows, 5)
    return (RatingBatch(kept, ids, users, items, np.asarray(ts, np.int64),
                        np.asarray(ratings, np.float32)), rejected)


@dataclass
class FeedbackBatch:
    """Columns of valid feedback records (the observed label of an earlier event)."""

    messages: list[Message]
    event_ids: list[str]
    labels: np.ndarray  # float32
    ts: np.ndarray  # int64 ms

    def __len__(self) -> int:
        return len(self.event_ids)


def decode_feedback(
    messages: Sequence[Message], codec: RecordCodec
) -> tuple[FeedbackBatch, list[Rejected]]:
    """Valid feedback records as columns, and the rejected rest."""

    def check(record: dict[str, Any], typed: bool, now: int) -> Row:
        if isinstance(record.get("label"), bool):
            record = {**record, "label": float(record["label"])}
        return (_check_str(record, "event_id"), _number(record, "label", 0.0, 1.0),
                _check_ts(record.get("ts"), now))

    kept, rows, rejected = _rows(messages, codec, check)
    ids, labels, ts = _columns(rows, 3)
    return (FeedbackBatch(kept, ids, np.asarray(labels, np.float32), np.asarray(ts, np.int64)),
            rejected)
