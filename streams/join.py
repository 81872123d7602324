"""Joining late feedback to the features an event was scored with, by ``event_id``.

State lives in a changelog-backed table (a Faust table in the worker; a dict in tests), one
record per micro-batch and partition rather than per event: the hot path writes ~1 changelog
record per batch, and the ``event_id -> row`` index is rebuilt from those records when a
partition is assigned (after Faust restored the table). Entries older than the event-time
window behind the partition's newest event time are dropped and counted; feedback that
arrives before its event waits (also in the table) within the same window.

Memory is bounded by entries, not only by time: a batch's record leaves as soon as its last
event joined, and at most ``max_entries`` event rows and waiting labels are held (the oldest
are evicted and counted), so a high rate or a long window cannot grow a worker without end.
"""

from __future__ import annotations

import json
from collections import OrderedDict
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
    """In-memory index over the store's records for the partitions this worker owns.

    ``max_entries`` bounds what is held: event rows of remembered batches plus waiting labels
    (``size``). Past it the oldest record or label (by event time) is evicted and counted in
    ``evicted``; memory is then at most about ``max_entries`` times the bytes of an entry.
    """

    store: JoinStore
    window_ms: int
    max_entries: int = 250_000
    joined: int = 0
    expired_events: int = 0
    expired_feedback: int = 0
    evicted: int = 0
    _index: dict[str, tuple[_EventRecord, int]] = field(default_factory=dict)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    # per partition, oldest first, by store key: a record leaves once all its rows joined
    _events: dict[int, OrderedDict[bytes, _EventRecord]] = field(default_factory=dict)
    _feedback: dict[int, OrderedDict[bytes, _Pending]] = field(default_factory=dict)
    _watermark: dict[int, int] = field(default_factory=dict)
    _rows: int = 0  # event rows held in ``_events`` (joined rows of a partly joined batch too)

    def __post_init__(self) -> None:
        if self.max_entries <= 0:
            raise ValueError(f"max_entries must be > 0, got {self.max_entries}")

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
                self._wait(pending)
                self._advance(pending.partition, pending.ts)
        self._evict()

    def drop(self, partitions: set[int]) -> None:
        """Forget (in memory only) the state of partitions that moved to another worker."""
        for p in partitions:
            for record in self._events.pop(p, OrderedDict()).values():
                self._rows -= len(record.ids)
                self._unindex(record)
            for pending in self._feedback.pop(p, OrderedDict()).values():
                if self._pending.get(pending.event_id) is pending:
                    del self._pending[pending.event_id]
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
        old = self._events.get(partition, {}).get(key)
        if old is not None:  # the same batch read again (a replay): the new one replaces it
            self._forget(old, store=False)
        self.store.put(partition, key, _encode_events(record))
        self._index_events(record)
        joined = Joined()
        if self._pending:
            for event_id in ids:
                pending = self._pending.pop(event_id, None)
                if pending is not None:
                    del self._feedback[pending.partition][pending.key]
                    self.store.put(pending.partition, pending.key, None)
                    self._match(event_id, pending.label, joined)
        self._evict()
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
            self._wait(_Pending(key, partition, event_id, label, t))
            self.store.put(partition, key, json.dumps(
                {"event_id": event_id, "label": label, "ts": t}).encode())
        self._evict()
        return joined

    def expire(self) -> None:
        """Drop events and waiting feedback older than the window; count what never joined."""
        for p, records in self._events.items():
            limit = self._watermark.get(p, 0) - self.window_ms
            while records and next(iter(records.values())).max_ts < limit:
                self.expired_events += self._forget(next(iter(records.values())))
        for p, waiting in self._feedback.items():
            limit = self._watermark.get(p, 0) - self.window_ms
            while waiting and next(iter(waiting.values())).ts < limit:
                self._unwait(next(iter(waiting.values())))
                self.expired_feedback += 1

    @property
    def size(self) -> int:
        """Entries held: event rows of remembered batches plus waiting labels."""
        return self._rows + len(self._pending)

    # -- internals --------------------------------------------------------------------------
    def _index_events(self, record: _EventRecord) -> None:
        for row, event_id in enumerate(record.ids):
            previous = self._index.get(event_id)
            if previous is not None:  # a replayed event: its older copy can never join
                if previous[0] is record:
                    record.remaining -= 1
                else:
                    self._release(previous[0])
            self._index[event_id] = (record, row)
        self._events.setdefault(record.partition, OrderedDict())[record.key] = record
        self._rows += len(record.ids)
        self._advance(record.partition, record.max_ts)

    def _wait(self, pending: _Pending) -> None:
        previous = self._pending.get(pending.event_id)
        if previous is not None:  # a replayed label: keep the newest only
            self._unwait(previous)
        self._pending[pending.event_id] = pending
        self._feedback.setdefault(pending.partition, OrderedDict())[pending.key] = pending

    def _unwait(self, pending: _Pending) -> None:
        """Drop a waiting label from memory and the store."""
        self._feedback.get(pending.partition, {}).pop(pending.key, None)
        if self._pending.get(pending.event_id) is pending:
            del self._pending[pending.event_id]
        self.store.put(pending.partition, pending.key, None)

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
        self._release(record)

    def _release(self, record: _EventRecord) -> None:
        """One row of ``record`` will never be looked up again; free the record after its
        last (every event of the batch got its label)."""
        record.remaining -= 1
        if record.remaining == 0:
            self._forget(record)

    def _forget(self, record: _EventRecord, *, store: bool = True) -> int:
        """Drop ``record`` from memory (and the store); returns its rows that never joined."""
        if self._events.get(record.partition, {}).get(record.key) is not record:
            return 0  # already gone
        del self._events[record.partition][record.key]
        self._rows -= len(record.ids)
        unjoined = self._unindex(record)
        if store:
            self.store.put(record.partition, record.key, None)
        record.remaining = 0
        return unjoined

    def _unindex(self, record: _EventRecord) -> int:
        unjoined = 0
        for row, event_id in enumerate(record.ids):
            entry = self._index.get(event_id)
            if entry is not None and entry[0] is record and entry[1] == row:
                del self._index[event_id]
                unjoined += 1
        return unjoined

    def _evict(self) -> None:
        """Past ``max_entries``: drop the oldest record or waiting label (by event time)."""
        while self.size > self.max_entries:
            heads: list[tuple[int, _EventRecord | _Pending]] = []
            for records in self._events.values():
                if records:
                    head = next(iter(records.values()))
                    heads.append((head.max_ts, head))
            for waiting in self._feedback.values():
                if waiting:
                    first = next(iter(waiting.values()))
                    heads.append((first.ts, first))
            if not heads:
                return
            oldest = min(heads, key=lambda h: h[0])[1]
            if isinstance(oldest, _EventRecord):
                self.evicted += self._forget(oldest)
            else:
                self._unwait(oldest)
                self.evicted += 1


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
