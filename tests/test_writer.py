"""The batch writer: a successful write hands over to the next batch at once."""

from __future__ import annotations

import threading
import time

from streaminfer.streams.writer import BatchWriter


def test_successful_writes_do_not_wait_out_the_retry_delay() -> None:
    """A retry delay of 1 s must cost nothing when no write fails: 20 batches in well under
    one delay (a sleep after every successful write once made each batch take 0.5 s)."""
    written: list[int] = []
    writer = BatchWriter(written.append, threading.Event(), retry_delay_s=1.0)
    started = time.monotonic()
    for item in range(20):
        writer.submit(item)
    writer.close()
    assert written == list(range(20))
    assert time.monotonic() - started < 1.0


def test_a_failed_write_is_retried_after_the_delay() -> None:
    attempts: list[float] = []

    def flaky(item: int) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise ConnectionError("sink down")

    writer = BatchWriter(flaky, threading.Event(), retry_delay_s=0.2)
    writer.submit(1)
    writer.close()
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.1  # equal jitter: between half and all the delay
