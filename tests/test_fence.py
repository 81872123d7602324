"""The freeze watch that fences a lane woken from SIGSTOP (streams/fence.py)."""

from __future__ import annotations

import time

from workers import wait_for

from streaminfer.streams.fence import FreezeWatch


def test_a_late_tick_counts_as_a_freeze_and_is_suspect_until_the_ticker_runs() -> None:
    watch = FreezeWatch(threshold_s=0.5, tick_s=0.05)
    time.sleep(0.3)
    assert watch.freezes == 0 and not watch.suspect()
    watch.last_tick -= 10  # as if every thread had been stopped for 10 s
    assert watch.suspect()  # before the ticker wakes: commits are already refused
    wait_for(lambda: watch.freezes == 1, 5, "the freeze to be counted")
    assert not watch.suspect()
