"""Progressive (test-then-train) metrics: how good were the scores the pipeline actually served?

Each event is scored before the model learns from it, so feeding ``(served score, target)``
pairs to :meth:`update` measures the model on data it had not yet seen - the streaming
equivalent of a held-out test set. Metrics cover everything seen so far, are tiny to keep,
serialise to JSON (``state()`` / ``from_state()``, e.g. into a checkpoint manifest) and
``merge`` across workers that each saw some partitions.

* :class:`ClassifierMetrics`: ROC AUC, log-loss, accuracy, count. AUC needs every score; a
  fixed histogram of scores per class (``2**16`` bins on the logit scale, where rare-event
  scores crowd near 0) gives it to well under 1e-3 in constant memory.
* :class:`RecommenderMetrics`: MAE, RMSE, count, and the RMSE of the best constant predictor
  (the mean of all targets so far), so a user can see the model beats it.
"""

from __future__ import annotations

import base64
import math
import zlib
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "ClassifierMetrics",
    "MulticlassMetrics",
    "ProgressiveMetrics",
    "RecommenderMetrics",
    "metrics_for",
    "metrics_from_state",
    "row_losses",
]

_EPS = 1e-7  # log-loss clips probabilities to [eps, 1 - eps]: one confident miss is not +inf
_LOGIT_RANGE = 18.0  # float32 sigmoid saturates beyond about +-17


class ProgressiveMetrics(Protocol):
    """What the stream code relies on, for either app."""

    def update(self, scores: Any, targets: Any) -> None: ...
    def snapshot(self) -> dict[str, float]: ...
    def state(self) -> dict[str, Any]: ...
    def merge(self, other: Any) -> Any: ...


def _vector(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain {int((~np.isfinite(array)).sum())} NaN/inf value(s)")
    return array


def _pair(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s, t = _vector(scores, "scores"), _vector(targets, "targets")
    if s.shape != t.shape:
        raise ValueError(f"scores and targets differ in length: {s.shape[0]} vs {t.shape[0]}")
    return s, t


def _pack(counts: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(counts.astype("<i8").tobytes(), 6)).decode("ascii")


def _unpack(text: str, bins: int) -> np.ndarray:
    counts = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i8").astype(np.int64)
    if counts.shape != (bins,):
        raise ValueError(f"histogram has {counts.shape[0]} bins, state says {bins}")
    return counts


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state is of kind {state.get('kind')!r}, expected {kind!r}")


class ClassifierMetrics:
    """Running ROC AUC, log-loss, accuracy and count of served probabilities vs 0/1 labels.

    A label >= 0.5 counts as positive for AUC and accuracy; log-loss uses the label as given
    (soft labels are fine). AUC is ``nan`` until both classes have been seen.
    """

    kind = "classifier"

    def __init__(self, bins: int = 2**16) -> None:
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)
        self.count = 0
        self.correct = 0
        self.logloss_sum = 0.0

    def _bin(self, p: np.ndarray) -> np.ndarray:
        q = np.clip(p, 1e-12, 1.0 - 1e-12)
        logit = np.log(q) - np.log1p(-q)
        scaled = (logit + _LOGIT_RANGE) * (self.bins / (2 * _LOGIT_RANGE))
        return np.clip(scaled, 0, self.bins - 1).astype(np.int64)

    def update(self, scores: Any, targets: Any) -> None:
        """Add a batch of served probabilities and their labels (numpy, torch or lists)."""
        p, y = _pair(scores, targets)
        if p.size == 0:
            return
        if ((y < 0) | (y > 1)).any():
            raise ValueError("classifier targets must lie in [0, 1]")
        p = np.clip(p, 0.0, 1.0)
        positive = y >= 0.5
        idx = self._bin(p)
        # add.at touches only the batch's bins; bincount(minlength=bins) would build and add
        # two arrays of every bin (1 MB) per batch
        np.add.at(self.pos, idx[positive], 1)
        np.add.at(self.neg, idx[~positive], 1)
        self.logloss_sum += float(self.losses(p, y).sum())
        self.correct += int(((p >= 0.5) == positive).sum())
        self.count += int(p.size)

    @staticmethod
    def losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-row log-loss of probabilities ``p`` (clipped) for labels ``y``."""
        pc = np.clip(p, _EPS, 1.0 - _EPS)
        return -(y * np.log(pc) + (1.0 - y) * np.log1p(-pc))

    def auc(self) -> float:
        """P(score of a random positive > score of a random negative), ties counting half."""
        n_pos, n_neg = float(self.pos.sum()), float(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            return math.nan
        neg = self.neg.astype(np.float64)
        below = np.cumsum(neg) - neg  # negatives in strictly lower bins
        wins = float((self.pos.astype(np.float64) * (below + 0.5 * neg)).sum())
        return wins / (n_pos * n_neg)

    def snapshot(self) -> dict[str, float]:
        n = self.count
        return {
            "count": float(n),
            "auc": self.auc(),
            "logloss": self.logloss_sum / n if n else math.nan,
            "accuracy": self.correct / n if n else math.nan,
            "positive_rate": float(self.pos.sum()) / n if n else math.nan,
        }

    def state(self) -> dict[str, Any]:
        """JSON-able; the histograms are zlib + base64 (mostly empty bins compress to little)."""
        return {
            "kind": self.kind,
            "bins": self.bins,
            "logit_range": _LOGIT_RANGE,
            "count": self.count,
            "correct": self.correct,
            "logloss_sum": self.logloss_sum,
            "pos": _pack(self.pos),
            "neg": _pack(self.neg),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClassifierMetrics:
        _check_kind(state, cls.kind)
        if state.get("logit_range") != _LOGIT_RANGE:
            raise ValueError(f"histogram logit range {state.get('logit_range')} != {_LOGIT_RANGE}")
        metrics = cls(int(state["bins"]))
        metrics.pos = _unpack(state["pos"], metrics.bins)
        metrics.neg = _unpack(state["neg"], metrics.bins)
        metrics.count, metrics.correct = int(state["count"]), int(state["correct"])
        metrics.logloss_sum = float(state["logloss_sum"])
        return metrics

    def merge(self, other: ClassifierMetrics) -> ClassifierMetrics:
        """Add what ``other`` saw (e.g. another worker's partitions); returns ``self``."""
        if not isinstance(other, ClassifierMetrics) or other.bins != self.bins:
            raise ValueError(f"cannot merge {other!r} into {self!r}")
        self.pos += other.pos
        self.neg += other.neg
        self.count += other.count
        self.correct += other.correct
        self.logloss_sum += other.logloss_sum
        return self

    def __repr__(self) -> str:
        return f"ClassifierMetrics(bins={self.bins}, count={self.count})"


class RecommenderMetrics:
    """Running MAE, RMSE and count of served ratings, and the RMSE of the best constant.

    The best constant predictor for squared error is the mean of the targets; its RMSE is
    their standard deviation, kept exactly with Welford / Chan running moments.
    """

    kind = "recommender"

    def __init__(self) -> None:
        self.count = 0
        self.abs_err_sum = 0.0
        self.sq_err_sum = 0.0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations of targets from their mean

    def _add_moments(self, count: int, mean: float, m2: float) -> None:
        total = self.count + count
        if total == 0:
            return
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    @staticmethod
    def losses(s: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-row squared error."""
        return (s - y) ** 2

    def update(self, scores: Any, targets: Any) -> None:
        """Add a batch of served predictions and the ratings that followed."""
        s, y = _pair(scores, targets)
        if s.size == 0:
            return
        err = s - y
        self.abs_err_sum += float(np.abs(err).sum())
        self.sq_err_sum += float((err * err).sum())
        batch_mean = float(y.mean())
        self._add_moments(int(y.size), batch_mean, float(((y - batch_mean) ** 2).sum()))

    def snapshot(self) -> dict[str, float]:
        n = self.count
        return {
            "count": float(n),
            "mae": self.abs_err_sum / n if n else math.nan,
            "rmse": math.sqrt(self.sq_err_sum / n) if n else math.nan,
            "baseline_rmse": math.sqrt(self.m2 / n) if n else math.nan,
            "mean_target": self.mean if n else math.nan,
        }

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "abs_err_sum": self.abs_err_sum,
            "sq_err_sum": self.sq_err_sum,
            "mean": self.mean,
            "m2": self.m2,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RecommenderMetrics:
        _check_kind(state, cls.kind)
        metrics = cls()
        metrics.count = int(state["count"])
        for name in ("abs_err_sum", "sq_err_sum", "mean", "m2"):
            setattr(metrics, name, float(state[name]))
        return metrics

    def merge(self, other: RecommenderMetrics) -> RecommenderMetrics:
        """Add what ``other`` saw; returns ``self``."""
        if not isinstance(other, RecommenderMetrics):
            raise ValueError(f"cannot merge {other!r} into {self!r}")
        self.abs_err_sum += other.abs_err_sum
        self.sq_err_sum += other.sq_err_sum
        self._add_moments(other.count, other.mean, other.m2)
        return self

    def __repr__(self) -> str:
        return f"RecommenderMetrics(count={self.count})"


class MulticlassMetrics:
    """Running accuracy and count of served class predictions (the predicted class index
    against the observed one)."""

    kind = "multiclass"

    def __init__(self) -> None:
        self.count = 0
        self.correct = 0

    @staticmethod
    def losses(s: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-row 0/1 loss: 1 where the predicted class is wrong."""
        return (np.rint(s) != np.rint(y)).astype(np.float64)

    def update(self, scores: Any, targets: Any) -> None:
        """Add a batch of predicted classes and the classes that were observed."""
        s, y = _pair(scores, targets)
        self.correct += int((np.rint(s) == np.rint(y)).sum())
        self.count += int(s.size)

    def snapshot(self) -> dict[str, float]:
        n = self.count
        return {"count": float(n), "accuracy": self.correct / n if n else math.nan}

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "correct": self.correct}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MulticlassMetrics:
        _check_kind(state, cls.kind)
        metrics = cls()
        metrics.count, metrics.correct = int(state["count"]), int(state["correct"])
        return metrics

    def merge(self, other: MulticlassMetrics) -> MulticlassMetrics:
        """Add what ``other`` saw; returns ``self``."""
        if not isinstance(other, MulticlassMetrics):
            raise ValueError(f"cannot merge {other!r} into {self!r}")
        self.count += other.count
        self.correct += other.correct
        return self

    def __repr__(self) -> str:
        return f"MulticlassMetrics(count={self.count})"


Metrics = ClassifierMetrics | RecommenderMetrics | MulticlassMetrics

_KINDS: dict[str, type[ClassifierMetrics] | type[RecommenderMetrics] | type[MulticlassMetrics]] = {
    "classifier": ClassifierMetrics,
    "recommender": RecommenderMetrics,
    "multiclass": MulticlassMetrics,
}


def metrics_for(kind: str) -> Metrics:
    """Fresh progressive metrics of ``kind``: ``classifier`` (AUC, log-loss), ``recommender``
    (RMSE, MAE) or ``multiclass`` (accuracy)."""
    if kind not in _KINDS:
        raise ValueError(f"no progressive metrics of kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind]()


def row_losses(kind: str, scores: Any, targets: Any) -> np.ndarray:
    """Per-row loss behind the headline figure of ``kind``'s metrics (log-loss, squared
    error, 0/1): what an online learner of weights (``streams.ensemble``) minimises."""
    if kind not in _KINDS:
        raise ValueError(f"no progressive metrics of kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind].losses(*_pair(scores, targets))


def metrics_from_state(state: dict[str, Any]) -> Metrics:
    """Rebuild whichever metrics ``state()`` wrote (it records its ``kind``)."""
    kind = state.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown progressive metrics kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind].from_state(state)
