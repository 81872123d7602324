"""AIMD batch sizing: grows while fast, halves when a batch eats over half the target."""

from __future__ import annotations

from streams.batcher import AdaptiveLimit


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
