"""Fencing a worker that was frozen (SIGSTOP, a VM pause, a swap storm) past its session.

The lanes read with manual assignment and commit under a group without members, so the broker
cannot fence a stale lane's commits by generation. A frozen process cannot tell it was frozen
from its own code path, but a thread that ticks every ``tick_s`` can: after a freeze its next
tick comes ``threshold_s`` or more late. Lanes ask ``suspect()`` right before every commit (the
ticker may not have run yet after the process resumed) and compare ``freezes`` with the count
they saw, to drop their partitions uncommitted after a freeze (``streams.pipeline.HotPath``).
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["FreezeWatch", "process_watch"]

log = logging.getLogger(__name__)


class FreezeWatch:
    """Counts the freezes of this process longer than ``threshold_s``."""

    def __init__(self, threshold_s: float = 5.0, tick_s: float = 0.25) -> None:
        self.threshold_s = threshold_s
        self.tick_s = tick_s
        self.freezes = 0
        self.last_tick = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="freeze-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = time.monotonic()
            gap = now - self.last_tick
            if gap >= self.threshold_s:
                self.freezes += 1
                log.warning("this process was frozen for %.1f s: its partitions may have "
                            "moved; lanes commit nothing until Faust confirms them", gap)
            self.last_tick = now

    def suspect(self) -> bool:
        """True if the process may just have been frozen (the ticker is late)."""
        return time.monotonic() - self.last_tick >= self.threshold_s


_watch: FreezeWatch | None = None
_lock = threading.Lock()


def process_watch() -> FreezeWatch:
    """The one watch of this process (a freeze stops every thread alike)."""
    global _watch
    with _lock:
        if _watch is None:
            _watch = FreezeWatch()
        return _watch
