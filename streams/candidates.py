"""Shadow and canary: registered versions that run beside the active one (docs/lifecycle.md).

* A **shadow** scores every batch the active version scores (one extra forward pass). Its
  outputs are recorded, never served: ``shadow:{app}:{key}`` hashes in Redis.
* A **canary** serves a key-hashed share of the keys (``canary_share``): a key's place is a
  hash of its UTF-8 bytes (CRC-32, mixed), so one key always sees one version, on every
  worker and after every restart. Its rows are stamped with its version.

Both learn from the same labels as the active version, and every version is scored
progressively (test-then-train) on those labels: at learn time each version scores the joined
rows, then each takes its steps. So the per-version metrics cover exactly the same events,
and a candidate is judged as it would serve once promoted (learning on).

An **ensemble** (``streams.ensemble``) serves instead of the active version: its members are
candidates too (role ``ensemble``), scored, judged and trained the same way.

Nothing a candidate does may break serving: an exception or a non-finite output is logged,
counted (``streaminfer_candidate_errors_total``), and the active rows go out unchanged.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streaminfer.connectors.prediction import Predictions
from streaminfer.models.base import Model
from streaminfer.models.progressive import Metrics, metrics_for
from streaminfer.streams.batch import Batch, take_rows
from streaminfer.streams.ensemble import Ensemble

__all__ = ["ROLES", "Candidate", "Candidates", "canary_mask", "compare", "key_share"]

log = logging.getLogger(__name__)

ROLES = ("shadow", "canary")
_SCALE = float(2**32)


def _hashes(keys: Sequence[str]) -> np.ndarray:
    """A CRC-32 of each key's UTF-8 bytes, then murmur3's finaliser: CRC-32 alone is linear,
    so keys that differ in a digit or two ("user-17", "user-18") bunch together."""
    h = np.fromiter((zlib.crc32(k.encode()) for k in keys), np.uint32, len(keys))
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def key_share(key: str) -> float:
    """Where ``key`` falls in [0, 1): the same in every process and after every restart
    (unlike Python's salted ``hash()``)."""
    return float(_hashes([key])[0]) / _SCALE


def canary_mask(keys: Sequence[str], share: float) -> np.ndarray:
    """Rows whose key belongs to the canary's ``share`` of the key space."""
    if share <= 0:
        return np.zeros(len(keys), bool)
    return _hashes(keys) < share * _SCALE


@dataclass
class Candidate:
    """A version loaded beside the active one, in one role, with its own counts."""

    role: str
    number: int
    model: Model
    rows: int = 0
    errors: int = 0
    nan_rows: int = 0
    #: rows it was asked to score but did not (raised or not finite): the guard's error rate
    failed_rows: int = 0
    loaded_at: float = field(default_factory=time.time)
    #: its progressive metrics, and the active version's over the same labels (since this
    #: candidate was loaded or the active version last changed)
    metrics: Metrics | None = None
    baseline: Metrics | None = None
    baseline_of: str = ""

    #: a search candidate's hyperparameters (``lr=0.05,l2=0``; ``streams.search``)
    params: str = ""

    @property
    def base(self) -> str:
        return f"v{self.number}"

    @property
    def name(self) -> str:
        """How metrics and the leaderboard name it: ``shadow v2``, ``search v1 lr=0.05``."""
        return f"{self.role} {self.base}" + (f" {self.params}" if self.params else "")

    def failed(self, what: str, exc: BaseException | str) -> None:
        self.errors += 1
        if self.errors <= 3 or self.errors % 1000 == 0:
            log.warning("%s %s failed %s (%d so far), the active version serves: %s",
                        self.role, self.base, what, self.errors, exc)


@dataclass
class Candidates:
    """The shadow and canary of one worker, and every version's progressive metrics.

    The model swap's watcher fills ``shadow``/``canary`` under the model lock; the lanes read
    them under the same lock, so a batch sees one set.
    """

    names: Sequence[str]
    canary_share: float = 0.0
    metrics_kind: str | None = None
    #: the learner's ``Learning.served``: one number per row from a model's scores
    served: Callable[[np.ndarray], np.ndarray] | None = None
    shadow: Candidate | None = None
    canary: Candidate | None = None
    #: an online hyperparameter search's learners: scored and trained on labels only
    search: list[Candidate] = field(default_factory=list)
    #: the served ensemble of registered versions, if the registry names one
    ensemble: Ensemble | None = None
    #: ``"role vN"`` -> progressive metrics over the same labels for every version
    metrics: dict[str, Metrics] = field(default_factory=dict)
    shadow_write_errors: int = 0

    def shadow_write_failed(self, exc: BaseException) -> None:
        self.shadow_write_errors += 1
        if self.shadow is not None:
            self.shadow.failed("writing to Redis", repr(exc))

    def current(self) -> list[Candidate]:
        members = self.ensemble.members if self.ensemble is not None else []
        return [*(c for c in (self.shadow, self.canary) if c is not None), *self.search,
                *members]

    def __bool__(self) -> bool:
        return bool(self.current())

    def score_ensemble(self, x: Any, rows: int) -> tuple[str, np.ndarray] | None:
        """``(stamp, scores)`` of the ensemble for a batch: the weighted mean over the members
        that scored it (a failing member is counted and left out of this batch's mean), or
        ``None`` when there is no ensemble or every member failed (the active one serves)."""
        ensemble = self.ensemble
        if ensemble is None or not rows:
            return None
        scored = [(m, s) for m in ensemble.members
                  if (s := self._score(m, x, rows)) is not None]
        if not scored:
            return None
        members = [m for m, _ in scored]
        return ensemble.stamp(members), ensemble.mean([s for _, s in scored], members)

    # -- serving ------------------------------------------------------------------------------
    def serve(self, batch: Batch, predictions: Predictions, scores: np.ndarray | None = None
              ) -> Predictions | None:
        """Let the canary serve its keys' rows of ``predictions`` (in place, stamped with its
        version; ``scores``, the array the learner keeps as served, too) and return the
        shadow's predictions for the batch, if there is a shadow."""
        if not len(batch):
            return None
        if self.canary is not None and self.canary_share > 0:
            self._serve_canary(self.canary, batch, predictions, scores)
        if self.shadow is None:
            return None
        scores = self._score(self.shadow, batch.features, len(batch))
        if scores is None:
            return None
        return Predictions(batch.event_ids, batch.keys, _columns(scores, self.names),
                           predictions.event_ts, predictions.processed_ts,
                           predictions.model_name, str(self.shadow.model.version),
                           digits=9 if scores.dtype == np.float32 else None)

    def _serve_canary(self, canary: Candidate, batch: Batch, predictions: Predictions,
                      served: np.ndarray | None) -> None:
        rows = np.flatnonzero(canary_mask(batch.keys, self.canary_share))
        if not len(rows):
            return
        x = batch.features
        part = x[rows] if isinstance(x, np.ndarray) else take_rows(x, rows.tolist())
        scores = self._score(canary, part, len(rows))
        if scores is None:
            return
        if (served is not None and served.flags.writeable
                and served.shape[1:] == scores.shape[1:]):
            served[rows] = scores
        for name, values in _columns(scores, self.names).items():
            column = predictions.outputs[name]
            for i, value in zip(rows.tolist(), values, strict=True):
                column[i] = value
        versions = predictions.versions or [predictions.model_version] * len(predictions)
        stamp = str(canary.model.version)
        for i in rows.tolist():
            versions[i] = stamp
        predictions.versions = versions

    def _score(self, candidate: Candidate, x: Any, rows: int) -> np.ndarray | None:
        try:
            scores = _predict(candidate.model, x)
            if scores.shape[0] != rows:
                raise ValueError(f"{scores.shape[0]} rows of scores for {rows} inputs")
        except Exception as exc:
            candidate.failed_rows += rows
            candidate.failed("scoring a batch", repr(exc))
            return None
        finite = np.isfinite(scores).reshape(rows, -1).all(axis=1)
        if not finite.all():
            candidate.failed_rows += rows
            candidate.nan_rows += int((~finite).sum())
            candidate.failed("with non-finite outputs", f"{int((~finite).sum())} of {rows} rows")
            return None
        candidate.rows += rows
        return scores

    # -- learning -----------------------------------------------------------------------------
    def test(self, x: Any, y: np.ndarray, active: Model) -> None:
        """Test-then-train: every version scores the labelled rows before any learns."""
        if self.metrics_kind is None or self.served is None or not self:
            return
        served = self._served(active, x)
        if served is None:
            return
        base = active.version.base
        self._metrics(f"active {base}").update(served, y)
        raw: dict[int, np.ndarray] = {}
        for c in self.current():
            scores = self._raw(c.model, x, c)
            if scores is None:
                continue
            raw[id(c)] = scores
            mine = self.served(scores)
            if c.metrics is None or c.baseline is None or c.baseline_of != base:
                c.baseline, c.baseline_of = metrics_for(self.metrics_kind), base
                c.metrics = c.metrics or metrics_for(self.metrics_kind)
            c.metrics.update(mine, y)
            c.baseline.update(served, y)
        if self.ensemble is not None:
            self._test_ensemble(self.ensemble, raw, y)

    def _test_ensemble(self, ensemble: Ensemble, raw: dict[int, np.ndarray],
                       y: np.ndarray) -> None:
        """The ensemble's own metrics (with the weights it served with), then the weights'
        step; only on rows every member scored, so all weights move on the same labels."""
        scores = [raw[id(m)] for m in ensemble.members if id(m) in raw]
        if len(scores) < len(ensemble.members):
            return
        assert self.served is not None
        self._metrics(f"ensemble {ensemble.stamp()}").update(
            self.served(ensemble.mean(scores)), y)
        ensemble.observe([self.served(s) for s in scores], y)

    def _served(self, model: Model, x: Any) -> np.ndarray | None:
        assert self.served is not None
        scores = self._raw(model, x)
        return None if scores is None else self.served(scores)

    def _raw(self, model: Model, x: Any, candidate: Candidate | None = None
             ) -> np.ndarray | None:
        """``model``'s finite outputs on labelled rows, or ``None`` (logged, counted)."""
        try:
            scores = _predict(model, x)
            if not np.isfinite(scores).all():
                raise ValueError(f"{int((~np.isfinite(scores)).sum())} non-finite scores")
            return scores
        except Exception as exc:
            if candidate is None:
                log.warning("active version not scored for its per-version metrics: %r", exc)
            else:
                candidate.failed("scoring labelled rows", repr(exc))
            return None

    def train(self, x: Any, y: np.ndarray) -> None:
        """The candidates' own steps on a chunk the active version just learnt from."""
        for candidate in self.current():
            try:
                candidate.model.learn(x, y)
            except Exception as exc:
                candidate.failed("learning", repr(exc))

    def _metrics(self, name: str) -> Metrics:
        if name not in self.metrics:
            assert self.metrics_kind is not None
            self.metrics[name] = metrics_for(self.metrics_kind)
        return self.metrics[name]

    # -- reporting ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Per version (``"active v1"``, ``"shadow v2"``...): its progressive metrics, and
        for the current candidates their rows, errors and NaN rows."""
        out = {name: _plain(metrics) for name, metrics in self.metrics.items()}
        for c in self.current():
            out[c.name] = {
                **(_plain(c.metrics) if c.metrics is not None else {}),
                "rows": c.rows, "errors": c.errors, "nan_rows": c.nan_rows,
                "version": str(c.model.version)}
        return out


def compare(snapshots: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """One row per version (``"active v1"``, ``"shadow v2"``...) over the workers' published
    snapshots (``metrics:{app}:{worker}``): labels, rows and errors summed, each metric the
    label-weighted mean of the workers' (exact for RMSE-style means' inputs, close for AUC)."""
    rows: dict[str, dict[str, float]] = {}
    weights: dict[str, dict[str, float]] = {}
    for snap in snapshots:
        versions = (snap.get("lifecycle") or {}).get("versions") or {}
        for name, figures in versions.items():
            row = rows.setdefault(name, {"workers": 0.0})
            row["workers"] += 1
            n = float(figures.get("count") or 0.0)
            for key, value in figures.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                if key in ("count", "rows", "errors", "nan_rows"):
                    row[key] = row.get(key, 0.0) + value
                elif n > 0 and math.isfinite(value):
                    row[key] = row.get(key, 0.0) + value * n
                    weights.setdefault(name, {})[key] = weights.get(name, {}).get(key, 0.0) + n
    for name, row in rows.items():
        for key, total in weights.get(name, {}).items():
            row[key] /= total
    return rows


def _predict(model: Model, x: Any) -> np.ndarray:
    with torch.no_grad():
        out = model.predict(x)
    return (out.detach().cpu().numpy() if isinstance(out, torch.Tensor)
            else np.asarray(out, np.float32))


def _plain(metrics: Metrics) -> dict[str, Any]:
    """Strict-JSON figures (NaN, e.g. AUC before both classes were seen, as None)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in metrics.snapshot().items()}


def _columns(scores: np.ndarray, names: Sequence[str]) -> dict[str, list[float]]:
    if scores.ndim == 1:
        return {names[0]: scores.tolist()}
    return {name: scores[:, j].tolist() for j, name in enumerate(names)}
