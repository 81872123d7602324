"""Joining late feedback to the features an event was scored with, by ``event_id``.

State lives in a changelog-backed table (a Faust table in the worker; a dict in tests), one
record per micro-batch and partition rather than per event: the hot path writes ~1 changelog
record per batch, and the ``event_id -> row`` index is rebuilt from those records when a
partition is assigned (after Faust restored the table). Entries older than the event-time
window behind the partition's newest event time are dropped and counted; feedback that
arrives before its event waits (also in the table, one record per feedback batch and
partition) within the same window.

Memory is bounded by entries, not only by time: a batch's record leaves as soon as its last
row joined, and at most ``max_entries`` event and label rows are held (the oldest records are
evicted and counted), so a high rate or a long window cannot grow a worker without end.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, pairwise, repeat
from operator import is_, itemgetter
from typing import Any, Protocol, TypeVar

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

__all__ = ["JoinState", "JoinStore", "Joined", "MemoryJoinStore"]


class JoinStore(Protocol):
    """Where join records persist: a ``None`` value deletes its key."""

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
    """Feedback matched to its events: features and the score served at prediction time.

    Features and scores are kept as row blocks (one per remembered batch they came from) and
    stacked once, in ``event_ids`` order, by :meth:`arrays`.
    """

    event_ids: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    _features: list[np.ndarray] = field(default_factory=list)
    _scores: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def extend(self, other: Joined) -> None:
        self.event_ids += other.event_ids
        self.labels += other.labels
        self._features += other._features
        self._scores += other._scores

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features, labels, served scores)`` as float32 arrays."""
        if not self.event_ids:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        x = np.concatenate(self._features) if len(self._features) > 1 else self._features[0]
        return (x.astype(np.float32, copy=False), np.asarray(self.labels, np.float32),
                np.concatenate(self._scores).astype(np.float32, copy=False))


@dataclass(eq=False)
class _Record:
    """One store record: a micro-batch's rows of one partition, events or waiting labels.

    It leaves memory and the store once ``remaining`` (rows that may still join) reaches 0.
    """

    key: bytes
    partition: int
    ids: list[str]
    ts: np.ndarray
    remaining: int
    max_ts: int


@dataclass(eq=False)
class _EventRecord(_Record):
    x: np.ndarray
    scores: np.ndarray


@dataclass(eq=False)
class _LabelRecord(_Record):
    labels: np.ndarray


@dataclass
class JoinState:
    """In-memory index over the store's records for the partitions this worker owns.

    Events and the labels that wait for their events are both kept as one record per
    micro-batch and partition, so the hot path writes about one store (changelog) record per
    batch whichever arrives first.

    ``max_entries`` bounds what is held: event rows plus label rows of remembered batches
    (``size``). Past it the oldest record (by event time) is evicted and its rows that never
    joined are counted in ``evicted``; memory is then at most about ``max_entries`` times the
    bytes of an entry.
    """

    store: JoinStore
    window_ms: int
    max_entries: int = 250_000
    joined: int = 0
    expired_events: int = 0
    expired_feedback: int = 0
    evicted: int = 0
    #: labels read before their event, which waited for it: a replay that reads a label topic
    #: ahead of its events (the join's slower path); on a live stream labels follow events
    waited: int = 0
    _index: dict[str, tuple[_EventRecord, int]] = field(default_factory=dict)
    _pending: dict[str, tuple[_LabelRecord, int]] = field(default_factory=dict)
    # per partition, oldest first, by store key: a record leaves once all its rows joined
    _events: dict[int, OrderedDict[bytes, _EventRecord]] = field(default_factory=dict)
    _feedback: dict[int, OrderedDict[bytes, _LabelRecord]] = field(default_factory=dict)
    _watermark: dict[int, int] = field(default_factory=dict)
    _rows: int = 0  # rows held in records (joined rows of a partly joined batch too)
    #: store writes of the current call, sent in one ``put_many`` as it returns (one wake-up
    #: of Faust's loop per call instead of one per record)
    _writes: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_entries <= 0:
            raise ValueError(f"max_entries must be > 0, got {self.max_entries}")

    # -- ownership --------------------------------------------------------------------------
    def load(self, partitions: set[int]) -> None:
        """Rebuild the index for newly owned partitions from the store (after recovery)."""
        self.drop(partitions)
        records = sorted(self.store.items(partitions), key=lambda kv: kv[0])
        for key, value in records:  # events first: "ev:" sorts before "fb:" and "fl:"
            if key.startswith(b"ev:"):
                self._hold(_decode_events(key, value))
            elif key.startswith((b"fl:", b"fb:")):
                labels = _decode_labels(key, value)
                self._hold(labels)
                # A label and its event are both held only if they joined before the move
                # (whichever came second joined at once): never learn from them twice.
                for row, event_id in enumerate(labels.ids):
                    if event_id in self._index and self._pending.get(event_id) == (labels, row):
                        del self._pending[event_id]
                        self._release(labels)
        self._evict()
        self._flush()

    def drop(self, partitions: set[int]) -> None:
        """Forget (in memory only) the state of partitions that moved to another worker."""
        for p in partitions:
            held: list[_Record] = [*self._events.pop(p, OrderedDict()).values(),
                                   *self._feedback.pop(p, OrderedDict()).values()]
            for record in held:
                self._rows -= len(record.ids)
                self._unindex(record)
            self._watermark.pop(p, None)

    # -- the stream -------------------------------------------------------------------------
    def add_events(self, partition: int, first_offset: int, ids: list[str], ts: np.ndarray,
                   x: np.ndarray, scores: np.ndarray) -> Joined:
        """Remember a batch's events; returns feedback that was waiting for them.

        A batch whose every event finds its waiting label (a worker catching up, which reads
        the smaller label records first) joins at once and is never held or stored: its
        record would be written and deleted in the same store call.
        """
        if not ids:
            return Joined()
        key = b"ev:%d:%020d" % (partition, first_offset)
        record = _EventRecord(key, partition, list(ids), ts.astype(np.int64), len(ids),
                              int(ts.max()), np.ascontiguousarray(x, np.float32),
                              scores.astype(np.float32))
        replaced = self._replace(self._events, record)
        # each id once: an id twice in the batch takes its waiting label once
        found = (list(dict.fromkeys(filter(self._pending.__contains__, ids)))
                 if self._pending else [])
        joined = Joined()
        if len(found) == len(ids):  # all joined (and no id twice)
            if replaced:
                self._writes.append((partition, key, None))
            self._advance(partition, record.max_ts)
            self._add_joined(joined, found, self._take_waiting(found))
            joined._features.append(record.x)
            joined._scores.append(record.scores)
        else:
            self._writes.append((partition, key,
                                 _encode(record, x=record.x, scores=record.scores)))
            self._hold(record)
            if found:
                self._match(found, self._take_waiting(found), joined)
        self._evict()
        self._flush()
        return joined

    def add_feedback(self, partition: int, offsets: Sequence[int] | np.ndarray, ids: list[str],
                     labels: np.ndarray, ts: np.ndarray) -> Joined:
        """Join feedback to remembered events; unmatched feedback waits for its event (one
        store record for all the labels of this call that wait)."""
        joined = Joined()
        if not ids:
            return joined
        self._advance(partition, int(ts.max()))
        found = list(map(self._index.__contains__, ids))
        self._match(list(compress(ids, found)), list(compress(labels.tolist(), found)), joined)
        waiting = [row for row, hit in enumerate(found) if not hit]
        if waiting:
            self.waited += len(waiting)
            rows = np.asarray(waiting)
            wait_ts = np.asarray(ts, np.int64)[rows]
            record = _LabelRecord(b"fl:%d:%020d" % (partition, int(offsets[waiting[0]])), partition,
                                  [ids[r] for r in waiting], wait_ts, len(waiting),
                                  int(wait_ts.max()), np.asarray(labels, np.float32)[rows])
            self._replace(self._feedback, record)
            self._writes.append((partition, record.key, _encode(record, labels=record.labels)))
            self._hold(record)
        self._evict()
        self._flush()
        return joined

    def expire(self) -> None:
        """Drop events and waiting feedback older than the window; count what never joined."""
        for p, records in self._events.items():
            limit = self._watermark.get(p, 0) - self.window_ms
            while records and next(iter(records.values())).max_ts < limit:
                self.expired_events += self._forget(next(iter(records.values())))
        for p, waiting in self._feedback.items():
            limit = self._watermark.get(p, 0) - self.window_ms
            while waiting and next(iter(waiting.values())).max_ts < limit:
                self.expired_feedback += self._forget(next(iter(waiting.values())))
        self._flush()

    @property
    def size(self) -> int:
        """Entries held: event rows and label rows of remembered batches."""
        return self._rows

    @property
    def waiting(self) -> int:
        """Labels waiting for their event."""
        return len(self._pending)

    # -- internals --------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._writes:
            writes, self._writes = self._writes, []
            self.store.put_many(writes)

    def _lookup(self, record: _Record) -> tuple[dict[int, OrderedDict[bytes, Any]],
                                                dict[str, tuple[Any, int]]]:
        """The per-partition records and the id index that ``record``'s kind lives in."""
        if isinstance(record, _EventRecord):
            return self._events, self._index
        return self._feedback, self._pending

    def _replace(self, held: dict[int, OrderedDict[bytes, Any]], record: _Record) -> bool:
        """The same batch read again (a replay): the new record replaces the old one (in the
        store too, when it is written). Returns whether one was held."""
        old = held.get(record.partition, {}).get(record.key)
        if old is not None:
            self._forget(old, store=False)
        return old is not None

    def _take_waiting(self, event_ids: list[str]) -> list[float]:
        """The waiting labels of ``event_ids`` (each waiting), in order; they stop waiting."""
        values: list[np.ndarray] = []
        for labels, rows in _runs(list(map(self._pending.pop, event_ids))):
            values.append(labels.labels[rows])
            self._release(labels, len(rows))
        return np.concatenate(values).tolist()  # type: ignore[no-any-return]

    def _add_joined(self, joined: Joined, event_ids: list[str], labels: list[float]) -> None:
        """Count ``event_ids`` as joined to ``labels`` (their events' rows: the caller's)."""
        joined.event_ids += event_ids
        joined.labels += labels
        self.joined += len(event_ids)

    def _hold(self, record: _Record) -> None:
        held, index = self._lookup(record)
        ids, n = record.ids, len(record.ids)
        if index.keys().isdisjoint(ids):  # the usual case, in bulk
            before = len(index)
            index.update(zip(ids, zip(repeat(record, n), range(n), strict=True), strict=True))
            record.remaining -= n - (len(index) - before)  # an id twice in the batch: the last
        else:
            for row, event_id in enumerate(ids):
                previous = index.get(event_id)
                if previous is not None:  # a replayed event or label: the older copy never joins
                    if previous[0] is record:
                        record.remaining -= 1
                    else:
                        self._release(previous[0])
                index[event_id] = (record, row)
        held.setdefault(record.partition, OrderedDict())[record.key] = record
        self._rows += n
        self._advance(record.partition, record.max_ts)

    def _advance(self, partition: int, ts: int) -> None:
        if ts > self._watermark.get(partition, 0):
            self._watermark[partition] = ts

    def _match(self, event_ids: list[str], labels: list[float], joined: Joined) -> None:
        """Join ``labels`` to their indexed events, in order; a record whose rows all joined
        leaves at once."""
        if not event_ids:
            return
        entries = list(map(self._index.pop, event_ids))
        self._add_joined(joined, event_ids, labels)
        for record, rows in _runs(entries):  # one row block per run of the same record
            joined._features.append(record.x[rows])
            joined._scores.append(record.scores[rows])
            self._release(record, len(rows))

    def _release(self, record: _Record, rows: int = 1) -> None:
        """``rows`` rows of ``record`` will never be looked up again; free the record after
        its last (every row of the batch joined)."""
        record.remaining -= rows
        if record.remaining <= 0:
            self._forget(record)

    def _forget(self, record: _Record, *, store: bool = True) -> int:
        """Drop ``record`` from memory (and the store); returns its rows that never joined."""
        held, _ = self._lookup(record)
        if held.get(record.partition, {}).get(record.key) is not record:
            return 0  # already gone
        del held[record.partition][record.key]
        self._rows -= len(record.ids)
        # ``remaining`` counts the index entries pointing at the record: none are left at 0
        unjoined = self._unindex(record) if record.remaining > 0 else 0
        if store:
            self._writes.append((record.partition, record.key, None))
        record.remaining = 0
        return unjoined

    def _unindex(self, record: _Record) -> int:
        _, index = self._lookup(record)
        unjoined = 0
        for row, event_id in enumerate(record.ids):
            entry = index.get(event_id)
            if entry is not None and entry[0] is record and entry[1] == row:
                del index[event_id]
                unjoined += 1
        return unjoined

    def _evict(self) -> None:
        """Past ``max_entries``: drop the oldest record (by event time), events or labels."""
        while self.size > self.max_entries:
            heads = [next(iter(records.values()))
                     for held in (self._events, self._feedback)
                     for records in held.values() if records]
            if not heads:
                return
            self.evicted += self._forget(min(heads, key=lambda r: r.max_ts))


_R = TypeVar("_R", bound=_Record)


def _runs(entries: list[tuple[_R, int]]) -> Iterator[tuple[_R, list[int]]]:
    """``(record, rows)`` for each run of consecutive index entries of the same record,
    found in bulk (a run usually spans a whole micro-batch): per row only C-level calls."""
    records = list(map(itemgetter(0), entries))
    rows = list(map(itemgetter(1), entries))
    if records.count(records[0]) == len(records):  # the usual case (identity, no __eq__)
        yield records[0], rows
        return
    same = np.fromiter(map(is_, records[1:], records[:-1]), np.bool_, len(records) - 1)
    bounds = [0, *(np.flatnonzero(~same) + 1).tolist(), len(records)]
    for lo, hi in pairwise(bounds):
        yield records[lo], rows[lo:hi]


def _encode(record: _Record, **arrays: np.ndarray) -> bytes:
    """A record's rows as safetensors: ``ts`` and the kind's arrays, the ids as metadata."""
    return st_save({"ts": record.ts, **arrays}, metadata={"ids": json.dumps(record.ids)})


def _decode(key: bytes, value: bytes) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
    """What :func:`_encode` wrote: the fields every record has, and its arrays."""
    arrays = st_load(value)
    ts = arrays["ts"]
    ids = json.loads(_metadata(value)["ids"])
    return (key, _partition_of(key), ids, ts, len(ts), int(ts.max()) if len(ts) else 0), arrays


def _decode_events(key: bytes, value: bytes) -> _EventRecord:
    head, arrays = _decode(key, value)
    return _EventRecord(*head, arrays["x"], arrays["scores"])


def _decode_labels(key: bytes, value: bytes) -> _LabelRecord:
    if key.startswith(b"fb:"):  # written by 0.1 workers: one JSON record per waiting label
        data = json.loads(value)
        ts = np.array([int(data["ts"])], np.int64)
        return _LabelRecord(key, _partition_of(key), [data["event_id"]], ts, 1, int(ts[0]),
                            np.array([float(data["label"])], np.float32))
    head, arrays = _decode(key, value)
    return _LabelRecord(*head, arrays["labels"])


def _metadata(value: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (8-byte header length + JSON header)."""
    size = int.from_bytes(value[:8], "little")
    return json.loads(value[8 : 8 + size]).get("__metadata__", {})
