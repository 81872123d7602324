"""Writing batch N while batch N+1 is decoded and scored.

The sinks mostly wait (Redis runs the script, Kafka acknowledges), so a second thread that
writes one batch at a time lets the lane's thread prepare the next batch meanwhile. A queue of
one keeps at most two batches in flight and gives back-pressure; batches are written and
committed in order. A failed write is retried (the sinks are idempotent) until it succeeds or
the worker stops, so a batch is never skipped: its offsets are committed only once written.
``on_write(True/False)`` brackets every attempt and ``on_retry(exc, delay_s)`` is told of every
failed one, so health checks can tell a lane that waits on a sink (alive) from one that is stuck.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BatchWriter"]

log = logging.getLogger(__name__)


class BatchWriter:
    """Runs ``write(item)`` for submitted items, in order, on its own thread."""

    def __init__(self, write: Callable[[Any], None], stop: threading.Event,
                 retry_delay_s: float = 0.5, name: str = "batch-writer",
                 on_retry: Callable[[BaseException, float], None] | None = None,
                 on_write: Callable[[bool], None] | None = None) -> None:
        self._write = write
        self._on_retry = on_retry
        self._on_write = on_write
        self._stop = stop
        self._retry_delay_s = retry_delay_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        """Hand over a prepared batch; blocks while the previous one is still queued."""
        self._queue.put(item)

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
                return
            except Exception as exc:
                if self._stop.is_set():
                    log.error("stopping with an unwritten batch; it will be re-delivered")
                    return
                log.exception("writing a batch failed; retrying in %.1fs", delay)
                if self._on_retry is not None:
                    self._on_retry(exc, delay)
            finally:
                if self._on_write is not None:
                    self._on_write(False)
            # Only a failed attempt waits (a sleep in the finally above also ran after every
            # successful write: 0.5 s per batch).
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
