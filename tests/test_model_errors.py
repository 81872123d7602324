"""A model that fails on some records: the batch is retried, then split to isolate them."""

from __future__ import annotations

import numpy as np
from confluent_kafka import Message

from streaminfer.streams.batch import Batch, Rejected
from streaminfer.streams.pipeline import score_isolating


class PickyHandler:
    """Scores the first feature; raises on any batch holding a negative one (a model bug)."""

    def __init__(self, fail_first_call: bool = False) -> None:
        self.calls = 0
        self.fail_first_call = fail_first_call

    def score(self, batch: Batch) -> np.ndarray:
        self.calls += 1
        if self.fail_first_call and self.calls == 1:
            raise RuntimeError("CUDA hiccup")
        if (batch.features[:, 0] < 0).any():
            raise ValueError("negative input")
        return batch.features[:, 0].copy()


def _batch(values: list[float]) -> Batch:
    n = len(values)
    msgs = [Message(topic="events", partition=0, offset=i, value=b"x") for i in range(n)]
    return Batch(msgs, [f"e{i}" for i in range(n)], [f"k{i}" for i in range(n)],
                 np.arange(n, dtype=np.int64), {},
                 np.array([[v] for v in values], np.float32))


def test_bad_records_are_isolated_and_the_rest_scored() -> None:
    values = [0.1, 0.2, -1.0, 0.4, 0.5, -2.0, 0.7, 0.8]
    rejected: list[Rejected] = []
    kept, scores = score_isolating(PickyHandler(), _batch(values), rejected)
    assert kept.event_ids == ["e0", "e1", "e3", "e4", "e6", "e7"]
    assert scores.tolist() == [np.float32(v) for v in values if v >= 0]
    assert sorted(r.msg.offset() for r in rejected) == [2, 5]
    assert all(r.error_type == "model" and "negative input" in r.reason for r in rejected)


def test_a_transient_failure_is_retried_without_losing_records() -> None:
    rejected: list[Rejected] = []
    handler = PickyHandler(fail_first_call=True)
    kept, _ = score_isolating(handler, _batch([0.1, 0.2, 0.3]), rejected)
    assert len(kept) == 3 and rejected == []
    assert handler.calls == 2  # the retry scored the whole batch at once
