"""Progressive (test-then-train) metrics as a user reads them: the AUC / log-loss of the scores a
classifier actually served, the RMSE of a recommender next to the best constant, equal whether
one worker or two saw the stream, and the same numbers in TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from streaminfer.models import create_model
from streaminfer.models.progressive import (
    ClassifierMetrics,
    RecommenderMetrics,
    metrics_for,
    metrics_from_state,
)
from streaminfer.models.tensorboard import ScalarLogger

N, BATCH, FEATURES = 50_000, 250, 8


@pytest.fixture(scope="module")
def served() -> tuple[np.ndarray, np.ndarray]:
    """A fraud-like stream (about 5 % positives) scored by an online classifier before it
    learns from each batch: ``(served scores, labels)`` as the pipeline would see them."""
    rng = np.random.default_rng(7)
    weights = rng.normal(size=FEATURES)
    x = rng.normal(loc=3.0, scale=2.0, size=(N, FEATURES)).astype(np.float32)
    logits = (x - 3.0) @ weights / 2.0 - 4.0
    y = (rng.random(N) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    model = create_model("classifier", num_features=FEATURES, device="cpu", lr=0.02)
    scores = np.empty(N, dtype=np.float32)
    for start in range(0, N, BATCH):
        batch = slice(start, start + BATCH)
        scores[batch] = model.predict(x[batch]).numpy()
        model.learn(x[batch], y[batch])
    return scores, y


def _feed(metrics: ClassifierMetrics, scores: np.ndarray, y: np.ndarray) -> None:
    for start in range(0, len(y), BATCH):
        batch = slice(start, start + BATCH)
        metrics.update(torch.from_numpy(scores[batch]), y[batch])  # torch and numpy alike


def test_classifier_metrics_match_sklearn_on_a_served_stream(served) -> None:
    scores, y = served
    metrics = ClassifierMetrics()
    _feed(metrics, scores, y)
    snap = metrics.snapshot()
    assert 0.02 < y.mean() < 0.10 and snap["count"] == N
    assert snap["positive_rate"] == pytest.approx(float(y.mean()))
    assert abs(snap["auc"] - roc_auc_score(y, scores)) < 1e-3
    assert 0.7 < snap["auc"] < 1.0  # the model learned something: a meaningful check
    clipped = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    assert snap["logloss"] == pytest.approx(log_loss(y, clipped), rel=1e-6)
    assert snap["accuracy"] == pytest.approx(accuracy_score(y, scores >= 0.5))


def test_auc_is_exact_up_to_ties_and_nan_until_both_classes_seen() -> None:
    metrics = ClassifierMetrics()
    assert math.isnan(metrics.snapshot()["auc"]) and metrics.snapshot()["count"] == 0
    metrics.update([0.9, 0.8], [1, 1])
    assert math.isnan(metrics.snapshot()["auc"])
    metrics.update([0.1, 0.85, 0.9], [0, 0, 0])  # one win, one loss, one tie out of 6 pairs
    assert metrics.snapshot()["auc"] == pytest.approx(
        roc_auc_score([1, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.85, 0.9])
    )
    # A saturated float32 score (exactly 0 or 1) still ranks and has finite log-loss.
    metrics.update(np.array([1.0, 0.0], dtype=np.float32), [0, 1])
    assert math.isfinite(metrics.snapshot()["logloss"])


def test_bad_inputs_are_refused_with_what_was_wrong() -> None:
    metrics = ClassifierMetrics()
    with pytest.raises(ValueError, match="differ in length: 2 vs 3"):
        metrics.update([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="scores contain 1 NaN"):
        metrics.update([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        metrics.update([0.1], [2])
    with pytest.raises(ValueError, match="must be 1-D"):
        RecommenderMetrics().update(np.zeros((2, 2)), np.zeros((2, 2)))
    assert metrics.count == 0  # a refused batch leaves the metrics untouched


def _ratings(n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Ratings with user taste, and a predictor that knows most of it."""
    rng = np.random.default_rng(3)
    taste = rng.normal(3.5, 0.8, size=n)
    y = np.clip(np.round(taste + rng.normal(0, 0.5, size=n)), 1, 5)
    return taste + rng.normal(0, 0.2, size=n), y


def test_recommender_rmse_beats_best_constant() -> None:
    pred, y = _ratings()
    metrics = RecommenderMetrics()
    for start in range(0, len(y), 500):
        metrics.update(pred[start : start + 500], y[start : start + 500])
    snap = metrics.snapshot()
    assert snap["count"] == len(y)
    assert snap["mae"] == pytest.approx(np.abs(pred - y).mean(), rel=1e-9)
    assert snap["rmse"] == pytest.approx(np.sqrt(((pred - y) ** 2).mean()), rel=1e-9)
    assert snap["mean_target"] == pytest.approx(y.mean(), rel=1e-12)
    assert snap["baseline_rmse"] == pytest.approx(np.sqrt(((y - y.mean()) ** 2).mean()), rel=1e-9)
    assert snap["rmse"] < 0.8 * snap["baseline_rmse"]
    # Predicting the mean exactly is the baseline.
    constant = RecommenderMetrics()
    constant.update(np.full(len(y), y.mean()), y)
    assert constant.snapshot()["rmse"] == pytest.approx(snap["baseline_rmse"], rel=1e-9)


def test_merge_of_two_halves_through_json_equals_one_pass(served) -> None:
    scores, y = served
    pred, ratings = _ratings()
    for one, first, second, (s, t) in (
        (ClassifierMetrics(), ClassifierMetrics(), ClassifierMetrics(), (scores, y)),
        (RecommenderMetrics(), RecommenderMetrics(), RecommenderMetrics(), (pred, ratings)),
    ):
        half = len(t) // 3  # unequal halves, as two workers' partitions would be
        one.update(s, t)
        first.update(s[:half], t[:half])
        second.update(s[half:], t[half:])
        # Each worker's state goes through a checkpoint manifest (JSON) before merging.
        a = metrics_from_state(json.loads(json.dumps(first.state())))
        b = metrics_from_state(json.loads(json.dumps(second.state())))
        merged = a.merge(b).snapshot()
        assert merged.keys() == one.snapshot().keys()
        for name, value in one.snapshot().items():
            assert merged[name] == pytest.approx(value, rel=1e-9), name
    with pytest.raises(ValueError, match="cannot merge"):
        ClassifierMetrics().merge(RecommenderMetrics())
    with pytest.raises(ValueError, match="unknown progressive metrics kind"):
        metrics_from_state({"kind": "nope"})
    assert isinstance(metrics_for("recommender"), RecommenderMetrics)


def test_state_is_small_enough_for_a_manifest(served) -> None:
    metrics = ClassifierMetrics()
    _feed(metrics, *served)
    assert len(json.dumps(metrics.state())) < 100_000
    restored = ClassifierMetrics.from_state(metrics.state())
    assert restored.snapshot() == metrics.snapshot()


def test_tensorboard_event_files_hold_the_scalars(tmp_path: Path, served) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scores, y = served
    now = [0.0]
    metrics = ClassifierMetrics()
    with ScalarLogger(
        tmp_path / "tb", every_s=10.0, prefix="classifier", clock=lambda: now[0]
    ) as log:
        written = []
        for step, start in enumerate(range(0, 4_500, 500)):
            metrics.update(scores[start : start + 500], y[start : start + 500])
            written.append(log.log(step, metrics.snapshot()))
            now[0] += 4.0  # a batch every 4 s: at most one write per 10 s
    assert written == [True, False, False, True, False, False, True, False, False]
    final = metrics.snapshot()

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"classifier/auc", "classifier/logloss", "classifier/count"} <= set(
        acc.Tags()["scalars"]
    )
    auc = acc.Scalars("classifier/auc")
    # Steps 0, 3, 6 by the rate limit, then 8 written on close so the last value shows.
    assert [e.step for e in auc] == [0, 3, 6, 8]
    assert auc[-1].value == pytest.approx(final["auc"], abs=1e-6)
    assert acc.Scalars("classifier/count")[-1].value == 4_500


def test_tensorboard_off_is_a_no_op(tmp_path: Path) -> None:
    log = ScalarLogger(None)
    assert not log.enabled and log.log(0, {"auc": 0.5}) is False
    log.close()
    assert list(tmp_path.iterdir()) == []
