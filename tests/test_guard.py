"""The lane's model guard: a sick model's batches are served by fallbacks (previous version,
stored prediction, default), marked, never dead-lettered; poison records still are."""

from __future__ import annotations

import threading
import time

import numpy as np
from confluent_kafka import Message

from streaminfer.connectors.prediction import Predictions
from streaminfer.streams.batch import Batch, Rejected
from streaminfer.streams.breaker import CircuitBreaker
from streaminfer.streams.guard import ModelGuard


class Model:
    """Scores the first feature; ``mode``: ok, raise (every call), negative (rows < 0 fail),
    hang (blocks until released)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.release = threading.Event()

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "raise":
            raise RuntimeError("sick model")
        if self.mode == "negative" and (x[:, 0] < 0).any():
            raise ValueError("negative input")
        if self.mode == "hang":
            self.release.wait(30)
        return x[:, 0].copy()


class Handler:
    def __init__(self, model: Model, previous: Model | None = None) -> None:
        self.model = model
        self.previous = previous

    def score(self, batch: Batch) -> np.ndarray:
        return self.model.predict(batch.features)


class Cached:
    def __init__(self, stored: dict[str, float]) -> None:
        self.stored = stored

    def read(self, keys: list[str]) -> list[list[float] | None]:
        return [[self.stored[k]] if k in self.stored else None for k in keys]


def _batch(values: list[float]) -> Batch:
    n = len(values)
    msgs = [Message(topic="events", partition=0, offset=i, value=b"x") for i in range(n)]
    return Batch(msgs, [f"e{i}" for i in range(n)], [f"k{i}" for i in range(n)],
                 np.arange(n, dtype=np.int64), {}, np.array([[v] for v in values], np.float32))


def _guard(handler: Handler, counts: dict[str, int], **breaker: object) -> ModelGuard:
    options = {"min_calls": 2, "window": 4, "open_for_s": 0.2, **breaker}
    return ModelGuard(handler, CircuitBreaker(**options),  # type: ignore[arg-type]
                      names=["score"], defaults={"score": 0.25}, cached=Cached({"k1": 0.9}),
                      on_fallback=lambda kind, n: counts.__setitem__(
                          kind, counts.get(kind, 0) + n))


def test_a_sick_model_is_served_by_cache_and_default_then_the_breaker_opens() -> None:
    counts: dict[str, int] = {}
    handler = Handler(Model("raise"))
    guard = _guard(handler, counts)
    rejected: list[Rejected] = []
    for _ in range(3):
        batch, scores, kinds = guard.score(_batch([0.1, 0.2, 0.3]), rejected)
        assert batch.event_ids == ["e0", "e1", "e2"]  # nothing dropped
        assert scores.tolist() == [0.25, np.float32(0.9), 0.25]
        assert kinds == ["default", "cached", "default"]
    assert rejected == []  # the model's fault: no record goes to the dead-letter topic
    assert guard.breaker.state == "open"
    assert counts == {"cached": 3, "default": 6}


def test_the_previous_version_serves_first_and_the_breaker_closes_on_recovery() -> None:
    counts: dict[str, int] = {}
    model = Model("raise")
    guard = _guard(Handler(model, previous=Model()), counts)
    for _ in range(3):
        _, scores, kinds = guard.score(_batch([0.5, 0.7]), [])
        assert kinds == ["previous", "previous"] and scores.tolist() == [0.5, np.float32(0.7)]
    assert guard.breaker.state == "open"
    model.mode = "ok"
    time.sleep(0.25)  # open_for_s: the next batch is the half-open trial
    _, scores, kinds = guard.score(_batch([0.5]), [])
    assert kinds is None and guard.breaker.state == "closed"


def test_poison_records_still_go_to_the_dead_letter_topic() -> None:
    counts: dict[str, int] = {}
    guard = _guard(Handler(Model("negative")), counts)
    rejected: list[Rejected] = []
    for _ in range(5):
        batch, _, kinds = guard.score(_batch([0.1, -1.0, 0.3, -2.0]), rejected)
        assert batch.event_ids == ["e0", "e2"] and kinds is None
    assert len(rejected) == 10 and all(r.error_type == "model" for r in rejected)
    assert guard.breaker.state == "closed"  # splitting a batch does not count against it
    assert counts == {}


def test_a_hung_model_is_cut_off_and_the_lane_keeps_serving() -> None:
    counts: dict[str, int] = {}
    model = Model("hang")
    guard = _guard(Handler(model), counts, timeout_s=0.3)
    started = time.monotonic()
    _, scores, kinds = guard.score(_batch([0.1, 0.2]), [])
    assert kinds == ["default", "cached"] and time.monotonic() - started < 5
    started = time.monotonic()
    _, _, kinds = guard.score(_batch([0.1]), [])  # refused at once while the call hangs
    assert kinds == ["default"] and time.monotonic() - started < 0.2
    model.mode = "ok"
    model.release.set()
    deadline = time.monotonic() + 5
    while guard.breaker.hung and time.monotonic() < deadline:
        time.sleep(0.01)
    deadline = time.monotonic() + 5  # the model serves again (after a trial, if it opened)
    while time.monotonic() < deadline:
        _, scores, kinds = guard.score(_batch([0.4]), [])
        if kinds is None:
            break
        time.sleep(0.05)
    assert kinds is None and scores.tolist() == [np.float32(0.4)]


def test_fallback_rows_are_marked_on_the_topic_records() -> None:
    predictions = Predictions(["e0", "e1"], ["k0", "k1"], {"score": [0.1, 0.2]}, [1, 2], 3,
                              "m", "v1", fallback=["", "cached"])
    records = predictions.records()
    assert [(r["degraded"], r["fallback"]) for r in records] == [(False, None),
                                                                 (True, "cached")]
    plain = Predictions(["e0"], ["k0"], {"score": [0.1]}, [1], 3, "m", "v1").records()
    assert plain[0]["degraded"] is False and plain[0]["fallback"] is None
