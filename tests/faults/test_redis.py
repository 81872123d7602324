"""Redis faults: stopped for 10 s and for 60 s mid-stream, and full (maxmemory, OOM errors).
The lanes pause their partitions, retry with backoff and resume by themselves."""

from __future__ import annotations

import threading
import time

import pytest
from harness import rss_mb, settle

#: RSS growth allowed during a 60 s outage: the three batches in flight (200 records here)
#: are kilobytes; what a worker's RSS may drift by anyway (allocator, Faust) is far larger
RSS_GROWTH_MB = 100


def _outage(ready, own_redis, client, seconds: float, name: str) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(int(300 * (seconds + 15)), 300)
    time.sleep(5)
    before = [rss_mb(w.pid) for w in ready.workers]
    peak = list(before)
    stopped = threading.Event()

    def sample() -> None:
        while not stopped.wait(1.0):
            for i, w in enumerate(ready.workers):
                peak[i] = max(peak[i], rss_mb(w.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    own_redis.stop()
    time.sleep(seconds)
    own_redis.start()
    back = time.time()
    stopped.set()
    sampler.join()
    growth = max(p - b for p, b in zip(peak, before, strict=True))
    settle(ready, stream, client, name, fault_end=back, dup_bound=0,
           extra={"rss_before_mb": [round(b) for b in before],
                  "rss_peak_mb": [round(p) for p in peak],
                  "rss_growth_mb": round(growth, 1)})
    assert growth < RSS_GROWTH_MB, (before, peak)


def test_redis_down_10_s(ready, own_redis, client) -> None:  # type: ignore[no-untyped-def]
    _outage(ready, own_redis, client, 10, "Redis down 10 s")


@pytest.mark.faults_long
def test_redis_down_60_s_memory_stays_bounded(ready, own_redis, client) -> None:  # type: ignore[no-untyped-def]
    _outage(ready, own_redis, client, 60, "Redis down 60 s")


def test_redis_full_oom_errors_then_room_again(ready, own_redis, client) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(4500, 300)
    time.sleep(5)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    # below what is used: every write (the guard's script included) fails with OOM
    client.config_set("maxmemory", max(1, used - 1_000_000))
    time.sleep(10)
    client.config_set("maxmemory", 0)
    back = time.time()
    settle(ready, stream, client, "Redis maxmemory (OOM) 10 s", fault_end=back, dup_bound=0)
    assert "OutOfMemoryError" in ready.dep.log_tail(10_000)  # retried, not dropped
