"""Joining late feedback to the features an event was scored with, by ``event_id``.

State lives in a changelog-backed table (a Faust table in the worker; a dict in tests), one
record per micro-batch and partition rather than per event: the hot path writes ~1 changelog
record per batch, and the ``event_id -> row`` index is rebuilt from those records when a
partition is assigned (after Faust restored the table). Entries older than the event-time
window behind the partition's newest event time are dropped and counted; feedback that
arrives before its event waits (also in the table) within the same window.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

__all__ = ["JoinState", "JoinStore", "Joined", "MemoryJoinStore"]


class JoinStore(Protocol):
    """Where join records persist: ``put(p, key, None)`` deletes."""

    def put(self, partition: int, key: bytes, value: bytes | None) -> None: ...
    def put_many(self, records: Sequence[tuple[int, bytes, bytes | None]]) -> None: ...
    def items(self, partitions: set[int]) -> Iterable[tuple[bytes, bytes]]: ...


def _partition_of(key: bytes) -> int:
    return int(key.split(b":", 2)[1])


class MemoryJoinStore:
    """A plain dict store (tests, single-process runs without Faust)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def put_many(self, records: Sequence[tuple[int, bytes, bytes | None]]) -> None:
        for record in records:
            self.put(*record)

    def items(self, partitions: set[int]) -> Iterable[tuple[bytes, bytes]]:
        return [(k, v) for k, v in list(self.data.items()) if _partition_of(k) in partitions]


@dataclass
class Joined:
    """Feedback matched to its event: features and the score served at prediction time."""

    event_ids: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.stack(self.features).astype(np.float32) if self.features else np.zeros((0, 0))
        return x, np.asarray(self.labels, np.float32), np.asarray(self.scores, np.float32)


@dataclass(eq=False)
class _EventRecord:
    key: bytes
    partition: int
    ids: list[str]
    ts: np.ndarray
    x: np.ndarray
    scores: np.ndarray
    remaining: int
    max_ts: int


@dataclass(eq=False)
class _Pending:
    key: bytes
    partition: int
    event_id: str
    label: float
    ts: int


@dataclass
class JoinState:
    """In-memory index over the store's records for the partitions this worker owns."""

    store: JoinStore
    window_ms: int
    joined: int = 0
    expired_events: int = 0
    expired_feedback: int = 0
    _index: dict[str, tuple[_EventRecord, int]] = field(default_factory=dict)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _events: dict[int, deque[_EventRecord]] = field(default_factory=dict)
    _feedback: dict[int, deque[_Pending]] = field(default_factory=dict)
    _watermark: dict[int, int] = field(default_factory=dict)

    # -- ownership --------------------------------------------------------------------------
    def load(self, partitions: set[int]) -> None:
        """Rebuild the index for newly owned partitions from the store (after recovery)."""
        self.drop(partitions)
        records = sorted(self.store.items(partitions), key=lambda kv: kv[0])
        for key, value in records:
            if key.startswith(b"ev:"):
                self._index_events(_decode_events(key, value))
            elif key.startswith(b"fb:"):
                pending = _decode_pending(key, value)
                self._pending[pending.event_id] = pending
                self._feedback.setdefault(pending.partition, deque()).append(pending)
                self._advance(pending.partition, pending.ts)

    def drop(self, partitions: set[int]) -> None:
        """Forget (in memory only) the state of partitions that moved to another worker."""
        for p in partitions:
            for record in self._events.pop(p, deque()):
                for event_id in record.ids:
                    self._index.pop(event_id, None)
            for pending in self._feedback.pop(p, deque()):
                self._pending.pop(pending.event_id, None)
            self._watermark.pop(p, None)

    # -- the stream -------------------------------------------------------------------------
    def add_events(self, partition: int, first_offset: int, ids: list[str], ts: np.ndarray,
                   x: np.ndarray, scores: np.ndarray) -> Joined:
        """Remember a batch's events; returns feedback that was waiting for them."""
        if not ids:
            return Joined()
        key = b"ev:%d:%020d" % (partition, first_offset)
        record = _EventRecord(key, partition, list(ids), ts.astype(np.int64),
                              np.ascontiguousarray(x, np.float32),
                              scores.astype(np.float32), len(ids), int(ts.max()))
        self.store.put(partition, key, _encode_events(record))
        self._index_events(record)
        joined = Joined()
        if self._pending:
            for event_id in ids:
                pending = self._pending.pop(event_id, None)
                if pending is not None:
                    self._match(event_id, pending.label, joined)
                    self.store.put(pending.partition, pending.key, None)
        return joined

    def add_feedback(self, partition: int, offsets: list[int], ids: list[str],
                     labels: np.ndarray, ts: np.ndarray) -> Joined:
        """Join feedback to remembered events; unmatched feedback waits for its event."""
        joined = Joined()
        for offset, event_id, label, t in zip(offsets, ids, labels.tolist(), ts.tolist(),
                                              strict=True):
            self._advance(partition, t)
            if event_id in self._index:
                self._match(event_id, label, joined)
                continue
            key = b"fb:%d:%020d" % (partition, offset)
            pending = _Pending(key, partition, event_id, label, t)
            self._pending[event_id] = pending
            self._feedback.setdefault(partition, deque()).append(pending)
            self.store.put(partition, key, json.dumps(
                {"event_id": event_id, "label": label, "ts": t}).encode())
        return joined

    def expire(self) -> None:
        """Drop events and waiting feedback older than the window; count what never joined."""
        for p, records in self._events.items():
            limit = self._watermark.get(p, 0) - self.window_ms
            while records and records[0].max_ts < limit:
                record = records.popleft()
                for row, event_id in enumerate(record.ids):
                    entry = self._index.get(event_id)
                    if entry is not None and entry[0] is record and entry[1] == row:
                        del self._index[event_id]
                        self.expired_events += 1
                if record.remaining:
                    self.store.put(p, record.key, None)
        for p, waiting in self._feedback.items():
            limit = self._watermark.get(p, 0) - self.window_ms
            while waiting and waiting[0].ts < limit:
                pending = waiting.popleft()
                if self._pending.get(pending.event_id) is pending:
                    del self._pending[pending.event_id]
                    self.expired_feedback += 1
                    self.store.put(p, pending.key, None)

    @property
    def size(self) -> int:
        return len(self._index) + len(self._pending)

    # -- internals --------------------------------------------------------------------------
    def _index_events(self, record: _EventRecord) -> None:
        for row, event_id in enumerate(record.ids):
            self._index[event_id] = (record, row)
        self._events.setdefault(record.partition, deque()).append(record)
        self._advance(record.partition, record.max_ts)

    def _advance(self, partition: int, ts: int) -> None:
        if ts > self._watermark.get(partition, 0):
            self._watermark[partition] = ts

    def _match(self, event_id: str, label: float, joined: Joined) -> None:
        record, row = self._index.pop(event_id)
        joined.event_ids.append(event_id)
        joined.features.append(record.x[row])
        joined.labels.append(label)
        joined.scores.append(float(record.scores[row]))
        self.joined += 1
        record.remaining -= 1
        if record.remaining == 0:  # every event of the batch got its label: free the record
            self.store.put(record.partition, record.key, None)


def _encode_events(record: _EventRecord) -> bytes:
    tensors = {"ts": record.ts, "x": record.x, "scores": record.scores}
    return st_save(tensors, metadata={"ids": json.dumps(record.ids)})


def _decode_events(key: bytes, value: bytes) -> _EventRecord:
    tensors = st_load(value)
    ids = _metadata(value)["ids"]
    ts = tensors["ts"]
    return _EventRecord(key, _partition_of(key), json.loads(ids), ts, tensors["x"],
                        tensors["scores"], len(ts), int(ts.max()) if len(ts) else 0)


def _metadata(value: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (8-byte header length + JSON header)."""
    size = int.from_bytes(value[:8], "little")
    return json.loads(value[8 : 8 + size]).get("__metadata__", {})


def _decode_pending(key: bytes, value: bytes) -> _Pending:
    data = json.loads(value)
    return _Pending(key, _partition_of(key), data["event_id"], float(data["label"]),
                    int(data["ts"]))
