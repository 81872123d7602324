"""Micro-batching: AIMD batch sizing (grows while fast, halves when a batch eats over half the
target) and when a batch closes."""

from __future__ import annotations

from streaminfer.streams.batcher import AdaptiveLimit, Batcher


def test_full_fast_batches_grow_the_limit_additively() -> None:
    limit = AdaptiveLimit(target_ms=100, maximum=1000, step=64)
    start = limit.current
    limit.observe(limit.current, service_ms=10)
    assert limit.current == start + 64


def test_partial_batches_do_not_grow_it() -> None:
    limit = AdaptiveLimit(target_ms=100, maximum=1000)
    start = limit.current
    limit.observe(start // 2, service_ms=10)
    assert limit.current == start


def test_slow_batches_halve_it_down_to_the_minimum() -> None:
    limit = AdaptiveLimit(target_ms=100, maximum=1000, minimum=16)
    for _ in range(20):
        limit.observe(limit.current, service_ms=80)
    assert limit.current == 16


def test_limit_never_exceeds_the_maximum() -> None:
    limit = AdaptiveLimit(target_ms=100, maximum=300, step=64)
    for _ in range(50):
        limit.observe(limit.current, service_ms=1)
    assert limit.current == 300


class _Msg:
    def __init__(self, value: bytes = b"x" * 10) -> None:
        self._value = value

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value


class _ScriptedConsumer:
    """Returns the scripted lists in turn (then nothing); remembers (num, timeout) asked."""

    def __init__(self, *replies: int) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[int, float]] = []

    def consume(self, num: int, timeout: float) -> list[_Msg]:
        self.calls.append((num, timeout))
        count = self.replies.pop(0) if self.replies else 0
        return [_Msg() for _ in range(min(count, num))]


def _batcher(consumer: _ScriptedConsumer, max_wait_s: float, maximum: int = 1000) -> Batcher:
    limit = AdaptiveLimit(target_ms=100, maximum=maximum)
    return Batcher(consumer, limit, max_wait_s, max_bytes=1 << 20)  # type: ignore[arg-type]


def test_with_no_wait_a_batch_is_what_is_already_queued() -> None:
    consumer = _ScriptedConsumer(1, 40, 500)
    batch = _batcher(consumer, max_wait_s=0.0).next_batch()
    assert len(batch) == 41  # the 500 arriving later belong to the next batch
    assert [timeout for _n, timeout in consumer.calls] == [0.01, 0.0]


def test_a_batch_waits_for_more_only_up_to_max_wait_after_its_first_record() -> None:
    consumer = _ScriptedConsumer(1, 10, 20)
    batch = _batcher(consumer, max_wait_s=0.05).next_batch()
    assert len(batch) == 31
    _first_wait, queued, more = (timeout for _n, timeout in consumer.calls[:3])
    assert queued == 0.0 and 0 < more <= 0.05


def test_a_batch_never_exceeds_the_current_limit() -> None:
    consumer = _ScriptedConsumer(1, 5000)
    batcher = _batcher(consumer, max_wait_s=0.05, maximum=300)
    batch = batcher.next_batch()
    assert len(batch) == batcher.limit.current == 256
    assert consumer.calls[1][0] == 255


def test_an_idle_consumer_gives_an_empty_batch() -> None:
    consumer = _ScriptedConsumer()
    assert _batcher(consumer, max_wait_s=0.05).next_batch() == []
    assert len(consumer.calls) == 1


def test_a_batch_closes_after_a_gap_without_records_before_max_wait() -> None:
    consumer = _ScriptedConsumer(1, 10, 0, 500)
    batch = _batcher(consumer, max_wait_s=0.05).next_batch()
    assert len(batch) == 11  # the 500 after the gap belong to the next batch
    assert consumer.calls[2][1] <= 0.002 + 1e-9


def test_records_that_keep_coming_keep_the_batch_open() -> None:
    consumer = _ScriptedConsumer(1, 0, 1, 1, 1, 0, 7)
    batch = _batcher(consumer, max_wait_s=0.05).next_batch()
    # nothing else queued after the first record is not a gap: it waits one for more
    assert len(batch) == 4
