"""The inference circuit breaker: when it trips, what it lets through, and a hung model."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from streaminfer.errors import ConfigError, InvalidRecord, ModelError, StreaminferError
from streaminfer.streams.breaker import BreakerOpen, CallTimeout, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def ok(value: Any = "scores") -> Any:
    return value


def boom() -> None:
    raise RuntimeError("CUDA error: device-side assert triggered")


def _fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(RuntimeError, match="CUDA"):
            breaker.call(boom)


def _breaker(clock: FakeClock, **kwargs: Any) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    moves: list[tuple[str, str]] = []
    options: dict[str, Any] = {"failure_rate": 0.5, "window": 10, "min_calls": 4,
                               "open_for_s": 30.0, **kwargs}
    breaker = CircuitBreaker(clock=clock, on_transition=lambda a, b: moves.append((a, b)),
                             **options)
    return breaker, moves


def test_closed_breaker_passes_results_and_errors_through() -> None:
    breaker, _ = _breaker(FakeClock())
    assert breaker.call(ok, [0.25, 0.75]) == [0.25, 0.75]
    _fail(breaker)
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.successes, stats.failures) == ("closed", 2, 1, 1)
    assert stats.failure_rate == 0.5


def test_does_not_trip_before_min_calls_then_trips_on_the_rate() -> None:
    breaker, moves = _breaker(FakeClock(), min_calls=4)
    _fail(breaker, 3)
    assert breaker.state == "closed"  # 3 of 3 failed, but too few calls to judge
    _fail(breaker)
    assert breaker.state == "open" and moves == [("closed", "open")]


def test_the_rate_is_over_the_last_calls_only() -> None:
    """3 of the last 4 failed: trips, though only 3 of all 7 calls did (a cumulative count
    would wait)."""
    breaker, _ = _breaker(FakeClock(), failure_rate=0.75, window=4, min_calls=2)
    for _ in range(4):
        breaker.call(ok)
    _fail(breaker, 2)
    assert breaker.state == "closed"  # ok ok boom boom: 2 of 4
    _fail(breaker)
    assert breaker.state == "open"


def test_old_failures_age_out_of_the_window() -> None:
    """A failure five batches ago no longer counts: one fresh failure in four stays closed."""
    breaker, _ = _breaker(FakeClock(), failure_rate=0.5, window=4, min_calls=4)
    _fail(breaker)
    for _ in range(4):
        breaker.call(ok)
    _fail(breaker)
    assert breaker.state == "closed" and breaker.stats().failure_rate == 0.25


def test_open_breaker_rejects_without_running_the_model() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock)
    _fail(breaker, 4)
    ran: list[int] = []
    clock.now += 10
    with pytest.raises(BreakerOpen) as caught:
        breaker.call(ran.append, 1)
    assert ran == []
    assert caught.value.retry_in_s == pytest.approx(20.0)
    assert isinstance(caught.value, ModelError) and isinstance(caught.value, StreaminferError)
    assert breaker.stats().rejected == 1 and breaker.stats().calls == 4


def test_half_open_lets_one_trial_through_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker, moves = _breaker(clock)
    _fail(breaker, 4)
    clock.now += 30
    assert breaker.state == "half-open"

    def trial() -> str:  # meanwhile, another batch asks: refused, the trial decides
        with pytest.raises(BreakerOpen, match="trial"):
            breaker.call(ok)
        return "trial result"

    assert breaker.call(trial) == "trial result"
    assert breaker.state == "closed"
    assert moves == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    stats = breaker.stats()
    assert stats.failure_rate == 0.0 and stats.transitions == 3 and stats.rejected == 1
    _fail(breaker, 3)  # a fresh window: the old failures do not count again
    assert breaker.state == "closed"


def test_failed_trial_reopens_for_the_full_period() -> None:
    clock = FakeClock()
    breaker, moves = _breaker(clock)
    _fail(breaker, 4)
    clock.now += 30
    _fail(breaker)
    assert breaker.state == "open"
    clock.now += 29.9
    with pytest.raises(BreakerOpen):
        breaker.call(ok)
    clock.now += 0.1
    assert breaker.call(ok) == "scores" and breaker.state == "closed"
    assert moves[1:3] == [("open", "half-open"), ("half-open", "open")]


def test_slow_calls_count_as_failures_but_return_their_result() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, slow_call_s=0.5)

    def slow_forward() -> str:
        clock.now += 0.8
        return "late scores"

    assert breaker.call(slow_forward) == "late scores"
    breaker.call(lambda: clock.__setattr__("now", clock.now + 0.5))  # at the limit: not slow
    for _ in range(2):
        breaker.call(slow_forward)
    stats = breaker.stats()
    assert (stats.state, stats.slow, stats.successes, stats.failures) == ("open", 3, 4, 0)


def test_slow_trial_reopens() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, slow_call_s=0.5, min_calls=1, failure_rate=1.0)
    _fail(breaker)
    clock.now += 30
    breaker.call(lambda: clock.__setattr__("now", clock.now + 2))
    assert breaker.state == "open"


def test_ignored_exceptions_pass_through_uncounted() -> None:
    """A batch with a bad record is the input's fault: it must not open the breaker."""
    breaker, _ = _breaker(FakeClock(), min_calls=1, failure_rate=1.0, ignore=(InvalidRecord,))

    def bad_input() -> None:
        raise InvalidRecord("features", "expected 16 floats, got 3")

    for _ in range(20):
        with pytest.raises(InvalidRecord):
            breaker.call(bad_input)
    stats = breaker.stats()
    assert (stats.state, stats.ignored, stats.failures) == ("closed", 20, 0)


@pytest.mark.parametrize("bad", [
    {"failure_rate": 0}, {"failure_rate": 1.5}, {"window": 0}, {"min_calls": 11},
    {"min_calls": 0}, {"open_for_s": -1}, {"slow_call_s": 0}, {"timeout_s": -0.1},
])
def test_bad_settings_name_the_field(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        CircuitBreaker(**{"window": 10, **bad})


def test_timeout_frees_the_lane_and_a_hung_call_blocks_further_calls() -> None:
    """Real threads: a hung forward pass costs the lane timeout_s, not forever; until it
    returns, the breaker starts no second call on the model."""
    breaker = CircuitBreaker(timeout_s=0.05, min_calls=5, window=5)
    release = threading.Event()
    threads: list[str] = []

    def hung_forward() -> str:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return "finally"

    started = time.monotonic()
    with pytest.raises(CallTimeout):
        breaker.call(hung_forward)
    assert time.monotonic() - started < 2.0
    assert threads and threads[0] != threading.current_thread().name
    assert breaker.state == "closed" and breaker.hung  # 1 bad of 1: too few to trip
    with pytest.raises(BreakerOpen, match="still running"):
        breaker.call(ok)

    release.set()
    deadline = time.monotonic() + 5
    while breaker.hung and time.monotonic() < deadline:
        time.sleep(0.005)
    assert breaker.call(ok, 7) == 7  # on the worker thread again, with its result

    def own_timeout() -> None:
        raise TimeoutError("the model's own")  # not mistaken for the breaker's timeout

    with pytest.raises(TimeoutError, match="model's own"):
        breaker.call(own_timeout)
    stats = breaker.stats()
    assert (stats.timeouts, stats.failures, stats.rejected, stats.calls) == (1, 1, 1, 3)
