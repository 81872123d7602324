"""From decoded Kafka messages to column batches a model takes, rejecting bad records.

Every rejection says which record (it keeps the message) and why (field and expectation),
so the worker can route it to the dead-letter topic and go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Message

from connectors.avro import DecodeError, RecordCodec
from connectors.records import InvalidRecord, now_ms

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


def _decode(msg: Message, codec: RecordCodec, rejected: list[Rejected]) -> dict[str, Any] | None:
    try:
        return codec.decode(msg.value())
    except DecodeError as exc:
        rejected.append(Rejected(msg, str(exc), "decode"))
        return None


def _decode_typed(msg: Message, codec: RecordCodec, rejected: list[Rejected]
                  ) -> tuple[dict[str, Any] | None, bool]:
    try:
        return codec.decode_typed(msg.value())
    except DecodeError as exc:
        rejected.append(Rejected(msg, str(exc), "decode"))
        return None, False


def decode_events(
    messages: Sequence[Message], codec: RecordCodec, num_features: int
) -> tuple[EventBatch, list[Rejected]]:
    """Valid classifier events as columns, and the rejected rest."""
    now = now_ms()
    rejected: list[Rejected] = []
    kept: list[Message] = []
    ids: list[str] = []
    keys: list[str] = []
    ts: list[int] = []
    rows: list[list[float]] = []
    lowest, highest = MIN_TS, now + MAX_FUTURE_MS
    for msg in messages:
        record, typed = _decode_typed(msg, codec, rejected)
        if record is None:
            continue
        try:
            features = record.get("features")
            if typed:  # read with exactly the event schema: only values need checking
                event_id, key, event_ts = record["event_id"], record["key"], record["ts"]
                if (len(features) != num_features or not event_id or not key
                        or not lowest <= event_ts <= highest):
                    _check_str(record, "event_id")
                    _check_str(record, "key")
                    _check_ts(event_ts, now)
                    raise InvalidRecord(
                        "features", f"expected {num_features} numbers, got {len(features)}")
            else:
                if not isinstance(features, list) or len(features) != num_features:
                    got = len(features) if isinstance(features, list) else type(features).__name__
                    raise InvalidRecord("features", f"expected {num_features} numbers, got {got}")
                event_id = _check_str(record, "event_id")
                key = _check_str(record, "key")
                event_ts = _check_ts(record.get("ts"), now)
        except InvalidRecord as exc:
            rejected.append(Rejected(msg, str(exc), "validation"))
            continue
        kept.append(msg)
        ids.append(event_id)
        keys.append(key)
        ts.append(event_ts)
        rows.append(features)
    try:
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows), num_features)
    except (TypeError, ValueError):  # a non-number inside some feature list: find it row by row
        matrix = np.zeros((len(rows), num_features), np.float32)
        bad = set()
        for i, row in enumerate(rows):
            try:
                matrix[i] = np.asarray(row, dtype=np.float32)
            except (TypeError, ValueError):
                bad.add(i)
        batch = EventBatch(kept, ids, keys, np.asarray(ts, np.int64), matrix)
        for i in sorted(bad):
            rejected.append(Rejected(kept[i], "field 'features': expected numbers", "validation"))
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


def decode_ratings(
    messages: Sequence[Message], codec: RecordCodec
) -> tuple[RatingBatch, list[Rejected]]:
    """Valid rating events as columns, and the rejected rest."""
    now = now_ms()
    rejected: list[Rejected] = []
    kept: list[Message] = []
    ids: list[str] = []
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    ratings: list[float] = []
    for msg in messages:
        record = _decode(msg, codec, rejected)
        if record is None:
            continue
        try:
            event_id = _check_str(record, "event_id")
            user = _check_str(record, "user")
            item = _check_str(record, "item")
            event_ts = _check_ts(record.get("ts"), now)
            rating = record.get("rating")
            if isinstance(rating, bool) or not isinstance(rating, int | float):
                raise InvalidRecord("rating", f"expected a number, got {rating!r}")
            if not math.isfinite(rating):
                raise InvalidRecord("rating", f"expected a finite number, got {rating!r}")
        except InvalidRecord as exc:
            rejected.append(Rejected(msg, str(exc), "validation"))
            continue
        kept.append(msg)
        ids.append(event_id)
        users.append(user)
        items.append(item)
        ts.append(event_ts)
        ratings.append(float(rating))
    return (
        RatingBatch(kept, ids, users, items, np.asarray(ts, np.int64),
                    np.asarray(ratings, np.float32)),
        rejected,
    )


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
    now = now_ms()
    rejected: list[Rejected] = []
    kept: list[Message] = []
    ids: list[str] = []
    labels: list[float] = []
    ts: list[int] = []
    for msg in messages:
        record = _decode(msg, codec, rejected)
        if record is None:
            continue
        try:
            event_id = _check_str(record, "event_id")
            event_ts = _check_ts(record.get("ts"), now)
            label = record.get("label")
            if isinstance(label, bool):
                label = float(label)
            if not isinstance(label, int | float) or not 0.0 <= label <= 1.0:
                raise InvalidRecord("label", f"expected a number in [0, 1], got {label!r}")
        except InvalidRecord as exc:
            rejected.append(Rejected(msg, str(exc), "validation"))
            continue
        kept.append(msg)
        ids.append(event_id)
        labels.append(float(label))
        ts.append(event_ts)
    return (
        FeedbackBatch(kept, ids, np.asarray(labels, np.float32), np.asarray(ts, np.int64)),
        rejected,
    )
