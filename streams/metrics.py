"""What a worker reports about itself: rate, batch size, event-time latency, rejects.

Kept in memory by the hot path threads and published every second to Redis
(``metrics:{app}:{worker}``, expiring) so ``streaminfer demo`` and dashboards can read them.
A lane talks to a ``LaneRecorder``: ``PipelineMetrics`` itself (the in-memory view only), or
``streams.observability.LaneMetrics``, which feeds the same ``PipelineMetrics`` and also
Prometheus and the health checks.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from streaminfer.streams.batch import Rejected

__all__ = ["LaneRecorder", "PipelineMetrics"]


class LaneRecorder(Protocol):
    """What a lane (``streams.pipeline.HotPath``) reports, once per loop turn or batch."""

    def before_batch(self, stop: threading.Event) -> None:
        """Called at the top of every loop turn (a heartbeat; may block in tests)."""

    def batch_fetched(self, records: int) -> None:
        """``records`` were read from Kafka and are now in flight."""

    def record_batch(self, size: int, rejected: int, latencies_ms: np.ndarray, limit: int, *,
                     records: int | None = None, service_s: float | None = None,
                     rejects: Sequence[Rejected] = ()) -> None:
        """A batch is written: ``size`` predictions, ``records`` input records in all."""

    def sink_writing(self, active: bool) -> None:
        """The writer starts (True) or ends (False) an attempt to write a batch to the sinks."""

    def sink_retry(self, exc: BaseException, delay_s: float) -> None:
        """A sink write failed; the writer retries it after ``delay_s``."""

    def sink_paused(self, paused: bool) -> None:
        """The lane paused (True) or resumed (False) its partitions because a sink is down."""

    def update_lag(self, consumer: Consumer, owned: Set[tuple[str, int]]) -> None:
        """Chance to measure consumer lag on the lane's thread (rate-limited by the callee)."""


@dataclass
class PipelineMetrics:
    """Thread-safe counters plus a window of recent latencies (event time -> Redis write)."""

    window: int = 20_000
    events: int = 0
    batches: int = 0
    rejected: int = 0
    batch_limit: int = 0
    started: float = field(default_factory=time.monotonic)
    _latencies: deque[float] = field(init=False)
    _rate_marks: deque[tuple[float, int]] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._latencies = deque(maxlen=self.window)
        self._rate_marks = deque(maxlen=64)

    def record_batch(self, size: int, rejected: int, latencies_ms: np.ndarray, limit: int, *,
                     records: int | None = None, service_s: float | None = None,
                     rejects: Sequence[Rejected] = ()) -> None:
        """Totals and latencies; the keyword details are for richer recorders (ignored here)."""
        with self._lock:
            self.events += size
            self.batches += 1
            self.rejected += rejected
            self.batch_limit = limit
            self._latencies.extend(latencies_ms.tolist())
            self._rate_marks.append((time.monotonic(), self.events))

    # The rest of LaneRecorder: nothing to do for the in-memory view.
    def before_batch(self, stop: threading.Event) -> None:
        return None

    def batch_fetched(self, records: int) -> None:
        return None

    def sink_writing(self, active: bool) -> None:
        return None

    def sink_retry(self, exc: BaseException, delay_s: float) -> None:
        return None

    def sink_paused(self, paused: bool) -> None:
        return None

    def update_lag(self, consumer: Consumer, owned: Set[tuple[str, int]]) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        """Totals, the rate over the last ~5 s, mean batch size and p50/p99 latency (ms)."""
        with self._lock:
            now = time.monotonic()
            marks = [m for m in self._rate_marks if now - m[0] <= 5.0]
            rate = 0.0
            if len(marks) >= 2 and marks[-1][0] > marks[0][0]:
                rate = (marks[-1][1] - marks[0][1]) / (now - marks[0][0])
            lat = np.fromiter(self._latencies, float) if self._latencies else np.zeros(1)
            return {
                "events": self.events,
                "batches": self.batches,
                "rejected": self.rejected,
                "rate": round(rate, 1),
                "batch_avg": round(self.events / self.batches, 1) if self.batches else 0.0,
                "batch_limit": self.batch_limit,
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "uptime_s": round(now - self.started, 1),
            }
