"""What a model produced for a batch: the record the sinks write.

``Predictions`` holds a batch as columns, the shape the hot path builds from tensors and the
sinks pack from, with the per-batch constants (model, version, processing time) held once.
``PredictionRow`` is the same for one event, for code that handles a few rows at a time.
``Recommendations`` holds a batch's top-N lists, one row per user, as the model's arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PredictionRow", "Predictions", "Recommendations"]


@dataclass(frozen=True, slots=True)
class PredictionRow:
    """One model output, shaped like ``schemas/prediction.avsc`` (timestamps in int ms).

    Holds plain Python numbers (build it from ``tensor.tolist()``), so the sinks need no
    per-field conversions on the hot path.
    """

    event_id: str
    key: str
    score: float
    model_version: str
    event_ts: int
    processed_ts: int
    model_name: str = ""
    scores: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The record for the predictions topic's encoder (hot path: no conversions)."""
        return {
            "event_id": self.event_id,
            "key": self.key,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "score": self.score,
            "scores": list(self.scores),
            "event_ts": self.event_ts,
            "processed_ts": self.processed_ts,
            "degraded": False,
            "fallback": None,
        }


@dataclass
class Predictions:
    """One batch's predictions as columns; row ``i`` is ``event_ids[i]``, ``keys[i]``, ...

    ``outputs`` maps each declared output name to its column of floats (``{"score": [...]}``
    for the built-in apps); the first output is the primary ``scores``. Rows a fallback
    served (the model's circuit breaker was open) say so in ``fallback``; the topic's records
    carry it as ``degraded``/``fallback``.
    """

    event_ids: list[str]
    keys: list[str]
    outputs: dict[str, list[float]]
    event_ts: list[int]
    processed_ts: int
    model_name: str
    model_version: str
    #: per row, which fallback served it (``previous``, ``cached``, ``default``) or ``""``
    #: for the model itself; ``None``: the model served the whole batch
    fallback: list[str] | None = None
    #: per row, the version that served it when rows differ (a canary serves some keys,
    #: ``streams.candidates``); ``None``: ``model_version`` served the whole batch
    versions: list[str] | None = None
    #: significant digits of the output values written as text (Redis): 9 keeps a float32
    #: score exact; ``None`` writes each float's shortest ``repr`` (float64 outputs)
    digits: int | None = None

    def __len__(self) -> int:
        return len(self.event_ids)

    @property
    def scores(self) -> list[float]:
        """The primary (first) output."""
        return next(iter(self.outputs.values()))

    def records(self) -> list[dict[str, Any]]:
        """One record per row for the predictions topic's schema."""
        columns, constants = self.columns()
        names = list(columns)
        return [{**constants, **dict(zip(names, values, strict=True))}
                for values in zip(*columns.values(), strict=True)]

    def columns(self) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """``(per-row columns, per-batch constants)`` for a columns encoder."""
        columns: dict[str, list[Any]] = {"event_id": self.event_ids, "key": self.keys,
                                          **self.outputs, "event_ts": self.event_ts}
        constants: dict[str, Any] = {"model_name": self.model_name,
                                     "model_version": self.model_version,
                                     "processed_ts": self.processed_ts}
        if self.fallback is None:
            constants.update(degraded=False, fallback=None)
        else:
            columns["degraded"] = [bool(kind) for kind in self.fallback]
            columns["fallback"] = [kind or None for kind in self.fallback]
        if self.versions is not None:
            del constants["model_version"]
            columns["model_version"] = self.versions
        return columns, constants

    def rows(self) -> list[PredictionRow]:
        """Rows for code that handles a few at a time (the primary output as ``score``, all
        outputs as ``scores`` when there are several)."""
        columns = list(self.outputs.values())
        extra = len(columns) > 1
        versions = self.versions or [self.model_version] * len(self)
        return [
            PredictionRow(eid, key, values[0], version, ts, self.processed_ts,
                          self.model_name, tuple(values) if extra else ())
            for eid, key, ts, version, *values in zip(self.event_ids, self.keys,
                                                      self.event_ts, versions, *columns,
                                                      strict=True)
        ]

    @classmethod
    def from_rows(cls, rows: Sequence[PredictionRow]) -> Predictions:
        """Columns of ``rows``, which must share model, version and processing time."""
        first = rows[0]
        return cls([r.event_id for r in rows], [r.key for r in rows],
                   {"score": [r.score for r in rows]}, [r.event_ts for r in rows],
                   first.processed_ts, first.model_name, first.model_version)


@dataclass(frozen=True)
class Recommendations:
    """One batch's top-N lists, one row per user: ``items[i, :counts[i]]`` are ``users[i]``'s
    best item ids and ``scores[i, :counts[i]]`` their scores, with the event that asked for
    them; cells past a row's count are padding.

    ``items`` (object) and ``scores`` are ``(n, k)`` arrays, the model's top-k output as it
    comes, so a batch of users costs the sink a few array operations, not objects per user.
    """

    users: list[str]
    items: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    event_ids: list[str]
    event_ts: list[int]
    processed_ts: int
    model_version: str = ""

    def __post_init__(self) -> None:
        n = len(self.users)
        if (self.items.ndim != 2 or self.items.shape != self.scores.shape
                or self.items.shape[0] != n or self.counts.shape != (n,)
                or len(self.event_ids) != n or len(self.event_ts) != n):
            raise ValueError(
                f"recommendations: {n} users, items {self.items.shape}, scores "
                f"{self.scores.shape}, counts {self.counts.shape}, {len(self.event_ids)} "
                f"event ids and {len(self.event_ts)} timestamps")
        if n and not 0 <= int(self.counts.min()) <= int(self.counts.max()) <= self.items.shape[1]:
            raise ValueError(f"recommendations: counts must be within 0..{self.items.shape[1]}")

    @classmethod
    def from_lists(cls, users: Sequence[str], items: Sequence[Sequence[str]],
                   scores: Sequence[Sequence[float]], event_ids: Sequence[str],
                   event_ts: Sequence[int], processed_ts: int,
                   model_version: str = "") -> Recommendations:
        """From one list of items and one of scores per user (lists of any length)."""
        for user, its, ss in zip(users, items, scores, strict=True):
            if len(its) != len(ss):
                raise ValueError(f"recommendation for user {user!r}: {len(its)} items but "
                                 f"{len(ss)} scores")
        counts = np.array([len(its) for its in items], np.int64).reshape(-1)
        k = int(counts.max()) if len(counts) else 0
        item_cells = np.full((len(users), k), "", object)
        score_cells = np.zeros((len(users), k), np.float64)
        for i, (its, ss) in enumerate(zip(items, scores, strict=True)):
            item_cells[i, :len(its)] = list(its)
            score_cells[i, :len(ss)] = ss
        return cls(list(users), item_cells, score_cells, counts, list(event_ids),
                   list(event_ts), processed_ts, model_version)

    def __len__(self) -> int:
        return len(self.users)

    def take(self, index: Sequence[int]) -> Recommendations:
        """The rows at ``index``."""
        rows = np.asarray(index, np.int64)
        return Recommendations([self.users[i] for i in index], self.items[rows],
                               self.scores[rows], self.counts[rows],
                               [self.event_ids[i] for i in index],
                               [self.event_ts[i] for i in index], self.processed_ts,
                               self.model_version)
