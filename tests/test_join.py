"""The feedback join's memory bounds (``streams.join``): joined batches leave at once, and
``max_entries`` caps what is held however many events or labels come. Pure: no servers."""

from __future__ import annotations

import weakref

import numpy as np

from streaminfer.streams.join import JoinState, MemoryJoinStore

WINDOW_MS = 600_000


def _events(join: JoinState, start: int, n: int, ts: int = 1_000, partition: int = 0):
    ids = [f"e{i}" for i in range(start, start + n)]
    return join.add_events(partition, start, ids, np.full(n, ts, np.int64),
                           np.ones((n, 3), np.float32), np.full(n, 0.5, np.float32))


def _labels(join: JoinState, start: int, n: int, ts: int = 1_000, partition: int = 0):
    ids = [f"e{i}" for i in range(start, start + n)]
    return join.add_feedback(partition, list(range(start, start + n)), ids,
                             np.ones(n, np.float32), np.full(n, ts, np.int64))


def test_a_batch_whose_events_all_joined_is_freed_at_once() -> None:
    """The soak's leak: joined batches stayed in memory for the whole window."""
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    features = np.ones((10, 3), np.float32)
    held = weakref.ref(features)
    join.add_events(0, 0, [f"e{i}" for i in range(10)], np.full(10, 1_000, np.int64),
                    features, np.full(10, 0.5, np.float32))
    del features
    assert len(_labels(join, 0, 10)) == 10
    assert held() is None  # nothing keeps the joined batch alive
    for batch in range(1, 100):
        _events(join, batch * 10, 10)
        assert len(_labels(join, batch * 10, 10)) == 10
    assert join.joined == 1000
    assert join.size == 0 and not store.data


def test_labels_before_their_events_join_and_leave() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    assert len(_labels(join, 0, 10)) == 0
    assert join.size == 10 and join.waited == 10
    assert len(_events(join, 0, 10)) == 10
    assert join.size == 0 and not store.data
    _events(join, 10, 5)
    assert len(_labels(join, 10, 5)) == 5
    assert join.waited == 10  # labels that found their event at once never waited


def test_events_stay_at_the_cap_and_the_oldest_go() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS, max_entries=100)
    for batch in range(50):  # 500 events that never get labels, in batches of 10
        _events(join, batch * 10, 10, ts=1_000 + batch)
        assert join.size <= 100
    assert join.size == 100 and join.evicted == 400
    assert len(store.data) == 10  # the evicted batches left the store too
    assert len(_labels(join, 490, 10)) == 10  # the newest are still there to join
    assert len(_labels(join, 0, 10)) == 0  # the oldest were evicted: these labels now wait


def test_waiting_labels_stay_at_the_cap() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS, max_entries=100)
    for start in range(0, 1000, 10):
        _labels(join, start, 10, ts=1_000 + start)
    assert join.size == 100 and join.evicted == 900
    assert len(store.data) == 10  # one store record per batch of waiting labels
    assert len(_events(join, 990, 10)) == 10  # the newest labels still join


def test_the_window_still_expires_by_event_time() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    _events(join, 0, 10, ts=1_000)
    _labels(join, 100, 5, ts=1_000)
    _events(join, 10, 10, ts=1_000 + WINDOW_MS + 1)  # advances the watermark past both
    join.expire()
    assert (join.expired_events, join.expired_feedback) == (10, 5)
    assert join.size == 10 and len(store.data) == 1


def test_a_replayed_batch_is_held_once() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    _events(join, 0, 10)
    _events(join, 0, 10)  # the same batch read again after a rebalance
    assert join.size == 10
    assert len(_labels(join, 0, 10)) == 10
    assert join.size == 0 and not store.data


def test_an_event_replayed_in_a_later_batch_frees_the_older_copy() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    _events(join, 0, 1)
    join.add_events(0, 5, ["e0"], np.array([1_000]), np.ones((1, 3), np.float32),
                    np.array([0.5], np.float32))
    assert join.size == 1
    assert len(_labels(join, 0, 1)) == 1
    assert join.size == 0 and not store.data


def test_a_moved_partition_is_forgotten_and_restored_within_the_cap() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS, max_entries=100)
    for batch in range(10):
        _events(join, batch * 10, 10, ts=1_000 + batch)
    join.drop({0})
    assert join.size == 0
    other = JoinState(store, WINDOW_MS, max_entries=50)
    other.load({0})
    assert other.size == 50 and other.evicted == 50
    assert len(_labels(other, 90, 10)) == 10


def test_random_interleavings_stay_within_the_cap_and_the_store_matches() -> None:
    """Events, labels (early, late, replayed) and partition moves in random order: what is held
    never passes the cap, and the store holds exactly what memory holds."""
    rng = np.random.default_rng(7)
    store = MemoryJoinStore()
    join = JoinState(store, 5_000, max_entries=60)
    offsets = [0, 0]
    for step in range(3_000):
        partition, op = int(rng.integers(2)), rng.random()
        start = int(rng.integers(0, 400))
        n = int(rng.integers(1, 8))
        ts = 1_000 + step * 10
        if op < 0.45:
            _events(join, offsets[partition] * 10 + partition, n, ts=ts, partition=partition)
            offsets[partition] += 1
        elif op < 0.9:
            _labels(join, start, n, ts=ts, partition=partition)
        elif op < 0.95:
            join.expire()
        else:
            join.drop({partition})
            join.load({partition})
        assert join.size <= 60
        held = {r.key for records in join._events.values() for r in records.values()}
        waiting = {w.key for records in join._feedback.values() for w in records.values()}
        assert set(store.data) == held | waiting
        assert join.size == sum(len(r.ids) for held in (join._events, join._feedback)
                                for records in held.values() for r in records.values())
    assert join.joined > 0 and join.evicted > 0


def test_restored_labels_that_joined_before_the_move_are_not_learned_again() -> None:
    """A batch of labels waits; half of it joins; the partition moves. The new owner holds
    the other half waiting, and learns each label once."""
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    _labels(join, 0, 10)  # all wait: one store record
    ids = [f"e{i}" for i in range(5)] + ["no-label"]  # half the labels' events, and one more
    joined = join.add_events(0, 0, ids, np.full(6, 1_000, np.int64), np.ones((6, 3), np.float32),
                             np.full(6, 0.5, np.float32))
    assert len(joined) == 5 and len(store.data) == 2  # both records still have unjoined rows
    other = JoinState(store, WINDOW_MS)
    other.load({0})
    assert other.waiting == 5  # e5..e9; e0..e4 joined before the move
    assert len(_events(other, 5, 5)) == 5
    assert other.joined == 5 and other.waiting == 0


def test_labels_written_one_per_record_by_older_workers_still_restore() -> None:
    store = MemoryJoinStore()
    store.put(0, b"fb:0:%020d" % 3, b'{"event_id": "e3", "label": 1.0, "ts": 1000}')
    join = JoinState(store, WINDOW_MS)
    join.load({0})
    assert join.waiting == 1
    joined = join.add_events(0, 3, ["e3"], np.array([1_000]), np.ones((1, 3), np.float32),
                             np.array([0.5], np.float32))
    assert joined.labels == [1.0] and not store.data


def test_an_event_twice_in_one_batch_still_frees_the_batch_once_joined() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    join.add_events(0, 0, ["a", "a", "b"], np.full(3, 1_000, np.int64),
                    np.ones((3, 3), np.float32), np.full(3, 0.5, np.float32))
    joined = join.add_feedback(0, [0, 1], ["a", "b"], np.ones(2, np.float32),
                               np.full(2, 1_000, np.int64))
    assert len(joined) == 2 and join.size == 0 and not store.data


def test_an_event_twice_in_one_batch_takes_its_waiting_label_once() -> None:
    store = MemoryJoinStore()
    join = JoinState(store, WINDOW_MS)
    _labels(join, 0, 1)
    joined = join.add_events(0, 0, ["e0", "e0", "e1"], np.full(3, 1_000, np.int64),
                             np.arange(9, dtype=np.float32).reshape(3, 3),
                             np.full(3, 0.5, np.float32))
    x, y, _ = joined.arrays()
    assert joined.event_ids == ["e0"] and y.tolist() == [1.0]
    assert x.tolist() == [[3.0, 4.0, 5.0]]  # the last copy of the event, as a label would
    assert join.waiting == 0 and len(_labels(join, 1, 1)) == 1
    assert join.size == 0 and not store.data


def test_a_batch_whose_labels_all_waited_joins_without_being_stored() -> None:
    """A worker catching up reads label records first: their events' batch joins at once,
    and the store sees the waiting labels' record leave and nothing else."""
    writes: list[tuple[int, bytes, bytes | None]] = []

    class Recording(MemoryJoinStore):
        def put_many(self, records):  # type: ignore[no-untyped-def]
            writes.extend(records)
            super().put_many(records)

    store = Recording()
    join = JoinState(store, WINDOW_MS)
    _labels(join, 0, 4)
    assert [w[1][:3] for w in writes] == [b"fl:"]
    writes.clear()
    joined = _events(join, 0, 4, ts=5_000)
    x, y, scores = joined.arrays()
    assert joined.event_ids == [f"e{i}" for i in range(4)] and len(y) == 4
    assert x.shape == (4, 3) and scores.tolist() == [0.5] * 4
    assert [(w[1][:3], w[2]) for w in writes] == [(b"fl:", None)]
    assert join.size == 0 and join.waiting == 0 and not store.data
    assert join.joined == 4


def test_a_batch_that_joined_at_once_still_moves_event_time() -> None:
    join = JoinState(MemoryJoinStore(), window_ms=1_000)
    _labels(join, 0, 2, ts=1_000)
    assert len(_events(join, 0, 2, ts=5_000)) == 2
    _labels(join, 10, 1, ts=3_000)  # waits, and is older than the window behind 5 s
    join.expire()
    assert join.expired_feedback == 1 and join.waiting == 0
