"""A circuit breaker around a batch's forward pass: a sick model fails fast instead of
making every batch wait for it, and a hung one does not hang the lane.

Hystrix/resilience4j semantics, per call (one call = one batch):

* **closed**: calls run. Each outcome goes into a rolling window of the last ``window``
  calls; a call that raised, timed out, or ran longer than ``slow_call_s`` counts as bad.
  Once the window holds at least ``min_calls`` outcomes and the bad share reaches
  ``failure_rate``, the breaker opens.
* **open**: ``call`` raises :class:`BreakerOpen` at once, without running anything, for
  ``open_for_s`` seconds; then the breaker is half-open.
* **half-open**: exactly one trial call runs (others are rejected meanwhile); a good trial
  closes the breaker with an empty window, a bad one opens it again for ``open_for_s``.

The window counts calls, not seconds: a lane makes one call per batch, so a time window
would hold a handful of calls at a low rate and thousands at a high one, and
``min_calls`` would mean something different at each.

**Timeouts.** With ``timeout_s`` set, the call runs on the breaker's own daemon worker
thread and the caller stops waiting after ``timeout_s`` (:class:`CallTimeout`, a bad
outcome). A Python thread cannot be killed: a hung call keeps its thread, the model and the
GPU stream it holds, until it returns by itself. Until then the breaker starts no second call
(it would queue behind the hung one, or run the model twice at once) and answers
:class:`BreakerOpen` instead, whatever its state says. Thread-local settings of the caller
(``torch.inference_mode()``, ``torch.cuda.device``/stream) do not cross to the worker: set
them inside ``fn``. Without ``timeout_s`` the call runs on the caller's thread (no hop), and
slowness is still measured afterwards.

**Fallbacks are the caller's**: ``call`` returns the result or raises
:class:`BreakerOpen`, :class:`CallTimeout` or the call's own exception; the lane decides what
a batch gets instead (retry later, a default score, the dead-letter topic). Exceptions in
``ignore`` (say, bad input in the batch rather than a sick model) pass through uncounted.

Libraries looked at: ``pybreaker`` (1.4) counts *consecutive* failures (``fail_max``), has no
rolling error rate, no slow-call rule and no timeout, lets every call through when half-open,
and reads the wall clock (``datetime.now``), so tests cannot inject a clock. ``circuitbreaker``
(2.1) is a decorator with the same consecutive-failure rule, a module-level monotonic clock and
no timeout. ``aiobreaker`` (1.2) is pybreaker's rule for asyncio (the lanes are threads) and
unmaintained since 2021. None has a window, slow calls or timeouts, so this is our own
(about 150 lines of code), with an injectable clock.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from streaminfer.errors import ConfigError, ModelError

__all__ = ["BreakerOpen", "BreakerStats", "CallTimeout", "CircuitBreaker", "State"]

T = TypeVar("T")
State = Literal["closed", "open", "half-open"]


class BreakerOpen(ModelError):
    """The breaker refused the call without running it; ``retry_in_s`` says when it may let
    one through again (0 while a timed-out call is still running: that one decides)."""

    def __init__(self, name: str, reason: str, retry_in_s: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open: {reason}")
        self.retry_in_s = retry_in_s


class CallTimeout(ModelError):
    """The call did not return within ``timeout_s``; it keeps running on its thread."""


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """Counters since the breaker was made, for metrics (monotonic, except ``state`` and
    ``failure_rate``, the bad share of the current window)."""

    state: State
    calls: int  # calls that ran (or started, for timeouts)
    successes: int  # returned in time (slow ones included)
    failures: int  # raised an exception not in ``ignore``
    slow: int  # returned, but after more than ``slow_call_s``
    timeouts: int  # stopped waiting after ``timeout_s``
    ignored: int  # raised an exception in ``ignore``
    rejected: int  # refused without running (open, trial in flight, or a hung call)
    transitions: int  # state changes
    failure_rate: float


class _Worker:
    """One daemon thread running one call at a time (a daemon, so that a hung call cannot
    keep the process from exiting, as a ``ThreadPoolExecutor`` thread would)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, who decides
                future.set_exception(exc)


class CircuitBreaker:
    """Closed / open / half-open breaker for one lane's model calls (thread-safe).

    ``failure_rate``: bad share of the window (0 < rate <= 1) that opens the breaker.
    ``window``: how many recent calls the rate is taken over. ``min_calls``: outcomes the
    window must hold before it can trip (so one early failure does not open it).
    ``open_for_s``: how long it stays open before a trial call. ``slow_call_s``: a call
    longer than this counts as bad (None: never). ``timeout_s``: stop waiting after this long
    (None: wait, and run on the caller's thread). ``clock``: monotonic seconds (tests inject
    a fake). ``ignore``: exception types that are the input's fault, not the model's.
    ``on_transition(old, new)``: called on every state change, under the breaker's lock
    (keep it short: a metrics update or a log line).
    """

    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        open_for_s: float = 30.0,
        slow_call_s: float | None = None,
        timeout_s: float | None = None,
        ignore: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[State, State], None] | None = None,
        name: str = "model",
    ) -> None:
        if not 0 < failure_rate <= 1:
            raise ConfigError(f"failure_rate must be in (0, 1], got {failure_rate}")
        if window < 1:
            raise ConfigError(f"window must be >= 1 call, got {window}")
        if not 1 <= min_calls <= window:
            raise ConfigError(f"min_calls must be in [1, window={window}], got {min_calls}")
        if open_for_s < 0:
            raise ConfigError(f"open_for_s must be >= 0, got {open_for_s}")
        for field, value in (("slow_call_s", slow_call_s), ("timeout_s", timeout_s)):
            if value is not None and value <= 0:
                raise ConfigError(f"{field} must be > 0 or None, got {value}")
        self.name = name
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.open_for_s = open_for_s
        self.slow_call_s = slow_call_s
        self.timeout_s = timeout_s
        self.ignore = ignore
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.RLock()  # on_transition may read the breaker
        self._outcomes: deque[bool] = deque(maxlen=window)  # True: bad
        self._bad = 0
        self._state: State = "closed"
        self._opened_at = 0.0
        self._trial_running = False
        self._hung: Future[Any] | None = None
        self._worker = _Worker(f"breaker-{name}") if timeout_s is not None else None
        self._calls = self._successes = self._failures = self._slow = 0
        self._timeouts = self._ignored = self._rejected = self._transitions = 0

    # -- what metrics read ---------------------------------------------------------------
    @property
    def state(self) -> State:
        """The current state (an open breaker past ``open_for_s`` reads half-open)."""
        with self._lock:
            self._maybe_half_open()
            return self._state

    @property
    def hung(self) -> bool:
        """A timed-out call is still running: calls are refused until it returns."""
        return self._hung is not None

    def stats(self) -> BreakerStats:
        with self._lock:
            self._maybe_half_open()
            rate = self._bad / len(self._outcomes) if self._outcomes else 0.0
            return BreakerStats(self._state, self._calls, self._successes, self._failures,
                                self._slow, self._timeouts, self._ignored, self._rejected,
                                self._transitions, rate)

    # -- the call --------------------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` if the breaker lets it through; raises :class:`BreakerOpen` if not,
        :class:`CallTimeout` after ``timeout_s``, or whatever ``fn`` raised."""
        trial = self._admit()
        start = self._clock()
        try:
            result = fn(*args) if self._worker is None else self._call_with_timeout(fn, args)
        except CallTimeout:
            self._record(trial, bad=True, kind="timeout")
            raise
        except self.ignore:
            self._record(trial, bad=None, kind="ignored")
            raise
        except Exception:
            self._record(trial, bad=True, kind="failure")
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: not the model's verdict
            self._record(trial, bad=None, kind=None)
            raise
        slow = self.slow_call_s is not None and self._clock() - start > self.slow_call_s
        self._record(trial, bad=slow, kind="slow" if slow else "success")
        return result

    def _admit(self) -> bool:
        """Let the call through (True: as the half-open trial) or raise BreakerOpen."""
        with self._lock:
            retry_in = 0.0
            if self._hung is not None:
                reason = "a timed-out call is still running"
            else:
                self._maybe_half_open()
                if self._state == "closed" or (self._state == "half-open"
                                               and not self._trial_running):
                    self._calls += 1
                    self._trial_running = self._state == "half-open"
                    return self._trial_running
                if self._state == "half-open":
                    reason = "a trial call is running"
                else:
                    retry_in = self._opened_at + self.open_for_s - self._clock()
                    reason = f"it opened {self.open_for_s - retry_in:.3g}s ago"
            self._rejected += 1
        raise BreakerOpen(self.name, reason, max(0.0, retry_in))

    def _call_with_timeout(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self._worker is not None and self.timeout_s is not None
        future = self._worker.submit(fn, args)
        done, _ = wait_for([future], timeout=self.timeout_s)
        if not done:
            with self._lock:
                self._hung = future
            future.add_done_callback(self._unhung)  # runs at once if it finished meanwhile
            raise CallTimeout(f"{self.name}: no result after {self.timeout_s:g}s "
                              f"(the call keeps running on its thread)")
        return future.result()

    def _unhung(self, future: Future[Any]) -> None:
        with self._lock:
            if self._hung is future:
                self._hung = None

    # -- state machine (callers hold no lock) ----------------------------------------------
    def _record(self, trial: bool, bad: bool | None, kind: str | None) -> None:
        """Count one outcome; ``bad`` None: the call says nothing about the model."""
        with self._lock:
            if kind == "timeout":
                self._timeouts += 1
            elif kind == "failure":
                self._failures += 1
            elif kind == "ignored":
                self._ignored += 1
            elif kind is not None:
                self._successes += 1
                self._slow += kind == "slow"
            if trial:
                self._trial_running = False
                if bad is not None:
                    self._move("open" if bad else "closed")
                return
            if bad is None or self._state != "closed":
                return  # a call admitted before the breaker opened: already decided
            if len(self._outcomes) == self._outcomes.maxlen:
                self._bad -= self._outcomes[0]
            self._outcomes.append(bad)
            self._bad += bad
            if (len(self._outcomes) >= self.min_calls
                    and self._bad >= self.failure_rate * len(self._outcomes)):
                self._move("open")

    def _maybe_half_open(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self.open_for_s:
            self._move("half-open")

    def _move(self, new: State) -> None:
        old, self._state = self._state, new
        if new == "open":
            self._opened_at = self._clock()
        if new != "half-open":  # a fresh window after each verdict
            self._outcomes.clear()
            self._bad = 0
        if old != new:
            self._transitions += 1
            if self._on_transition is not None:
                self._on_transition(old, new)
