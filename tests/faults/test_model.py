"""Model faults behind the lane's circuit breaker (``streams.guard``): the model raises on one
batch, on every batch for a while, or hangs for 60 s. A batch the model fails on entirely, or
that times out (``--model-timeout-s 2`` here), or that meets an open breaker is served by the
fallbacks (here: the last stored prediction, else the default), marked ``degraded``; nothing
goes to the dead-letter topic and the lane keeps serving. The breaker closes once the model
answers again."""

from __future__ import annotations

import time
from collections import Counter

from harness import settle
from workers import read_topic


def _fallbacks(ready, ids: set[str]) -> Counter[str]:  # type: ignore[no-untyped-def]
    records = read_topic(ready.bootstrap, ready.dep.predictions_topic, idle_s=1.0)
    return Counter(r.get("fallback") or "model" for r in records if r["event_id"] in ids)


def test_model_raises_on_one_batch(ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(3000, 300)
    time.sleep(4)
    ready.chaos("raise 1")
    settle(ready, stream, client, "model raises once", fault_end=time.time(), dup_bound=0)


def test_model_raises_on_every_batch_for_5_s(ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(4500, 300)
    time.sleep(4)
    ready.chaos("raise always")
    time.sleep(5)
    ready.chaos("")
    out = settle(ready, stream, client, "model raises on every batch for 5 s",
                 fault_end=time.time(), dup_bound=0)
    kinds = _fallbacks(ready, set(stream.sent))
    out.extra.update(kinds)
    print("served by:", dict(kinds))
    assert kinds["cached"] + kinds["default"] > 0  # the fault was served by fallbacks
    last = max(stream.sent.values(), key=lambda v: v[1])[0]  # the model serves again
    assert client.hget(f"pred:classifier:{last}", "degraded") == b"0"


def test_model_hangs_for_60_s(ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(300 * 75, 300)
    time.sleep(4)
    ready.chaos("hang 60")
    started = time.time()
    out = settle(ready, stream, client, "model hangs 60 s", fault_end=started + 60,
                 dup_bound=0, timeout=240)
    kinds = _fallbacks(ready, set(stream.sent))
    print("served by:", dict(kinds))
    assert kinds["cached"] + kinds["default"] > 0
    assert out.longest_gap_s < 20, out.line()  # cut off after 2 s: no 60 s hole
