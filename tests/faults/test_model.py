"""Model faults, without a circuit breaker: the model raises on one batch, on every batch for
a while, or hangs for 60 s. Today: a failing batch is retried once, then bisected; records
the model fails on alone go to the DLQ (error type ``model``); a hang blocks the lane."""

from __future__ import annotations

import time

from harness import settle
from workers import read_topic


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
                 fault_end=time.time(), dup_bound=0, allow_model_rejects=True)
    dead = read_topic(ready.bootstrap, ready.dep.events_topic + ".dlq", schema="", idle_s=0.5)
    kinds = {d["_headers"]["streaminfer.error_type"].decode() for d in dead}
    assert kinds <= {"model"} and out.dead_letters == len(dead)


def test_model_hangs_for_60_s(ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(300 * 75, 300)
    time.sleep(4)
    ready.chaos("hang 60")
    started = time.time()
    settle(ready, stream, client, "model hangs 60 s", fault_end=started + 60, dup_bound=0,
           timeout=240)
