"""Writing batch N while batch N+1 is decoded and scored.

The sinks mostly wait (Redis runs the script, Kafka acknowledges), so a second thread that
writes one batch at a time lets the lane's thread prepare the next batch meanwhile. A queue of
one keeps at most two batches in flight and gives back-pressure; batches are written and
committed in order. A failed write is retried (the sinks are idempotent) until it succeeds or
the worker stops, so a batch is never skipped: its offsets are committed only once written.
``on_write(True/False)`` brackets every attempt and ``on_retry(exc, delay_s)`` is told of every
failed one, so health checks can tell a lane that waits on a sink (alive) from one that is stuck.

Retries back off exponentially (``retry_delay_s`` doubling up to ``max_delay_s``) with equal
jitter: each wait is drawn from [d/2, d], so the lanes of many workers that lost Redis at the same
moment do not all reconnect at the same moment. ``failing`` is set from the first failed attempt
until a write succeeds: the lane reads it to stop fetching (``HotPath`` pauses its partitions).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BatchWriter"]

log = logging.getLogger(__name__)


class BatchWriter:
    """Runs ``write(item)`` for submitted items, in order, on its own thread."""

    def __init__(self, write: Callable[[Any], None], stop: threading.Event,
                 retry_delay_s: float = 0.5, name: str = "batch-writer",
                 on_retry: Callable[[BaseException, float], None] | None = None,
                 on_write: Callable[[bool], None] | None = None,
                 max_delay_s: float = 10.0) -> None:
        self._write = write
        self._on_retry = on_retry
        self._on_write = on_write
        self._stop = stop
        self._retry_delay_s = retry_delay_s
        self._max_delay_s = max(max_delay_s, retry_delay_s)
        #: set while the sinks refuse writes (first failure until the next success)
        self.failing = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        """Hand over a prepared batch; blocks while the previous one is still queued."""
        self._queue.put(item)

    def offer(self, item: Any, timeout_s: float) -> bool:
        """Hand over a prepared batch if the queue takes it within ``timeout_s``."""
        try:
            self._queue.put(item, timeout=timeout_s)
        except queue.Full:
            return False
        return True

    def idle(self) -> bool:
        """Nothing submitted is still waiting to be written."""
        return self._queue.unfinished_tasks == 0

    def drain(self) -> None:
        """Return once everything submitted so far is written (or given up at stop)."""
        self._queue.join()

    def close(self) -> None:
        self.drain()
        self._closed = True
        self._queue.put(None)
        self._thread.join(30.0)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None and self._closed:
                    return
                self._write_durably(item)
            finally:
                self._queue.task_done()

    def _write_durably(self, item: Any) -> None:
        delay = self._retry_delay_s
        while True:
            if self._on_write is not None:
                self._on_write(True)
            try:
                self._write(item)
                self.failing.clear()
                return
            except Exception as exc:
                self.failing.set()
                if self._stop.is_set():
                    log.error("stopping with an unwritten batch; it will be re-delivered")
                    return
                wait = random.uniform(delay / 2, delay)  # equal jitter
                log.warning("writing a batch failed (%s: %s); retrying in %.2fs",
                            type(exc).__name__, exc, wait)
                if self._on_retry is not None:
                    self._on_retry(exc, wait)
            finally:
                if self._on_write is not None:
                    self._on_write(False)
            self._stop.wait(wait)
            delay = min(delay * 2, self._max_delay_s)
