"""What a model produced for a batch: the record the sinks write.

``Predictions`` holds a batch as columns, the shape the hot path builds from tensors and the
sinks pack from, with the per-batch constants (model, version, processing time) held once.
``PredictionRow`` is the same for one event, for code that handles a few rows at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PredictionRow", "Predictions"]


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
        }


@dataclass
class Predictions:
    """One batch's predictions as columns; row ``i`` is ``event_ids[i]``, ``keys[i]``, ..."""

    event_ids: list[str]
    keys: list[str]
    scores: list[float]
    event_ts: list[int]
    processed_ts: int
    model_name: str
    model_version: str

    def __len__(self) -> int:
        return len(self.event_ids)

    def records(self) -> list[dict[str, Any]]:
        """Records for ``schemas/prediction.avsc`` (``scores`` left to its default)."""
        name, version, processed = self.model_name, self.model_version, self.processed_ts
        return [
            {"event_id": eid, "key": key, "model_name": name, "model_version": version,
             "score": score, "event_ts": ts, "processed_ts": processed}
            for eid, key, score, ts in zip(self.event_ids, self.keys, self.scores,
                                           self.event_ts, strict=True)
        ]

    def columns(self) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """``(per-row columns, per-batch constants)`` for a columns encoder."""
        return ({"event_id": self.event_ids, "key": self.keys, "score": self.scores,
                 "event_ts": self.event_ts},
                {"model_name": self.model_name, "model_version": self.model_version,
                 "processed_ts": self.processed_ts})

    def rows(self) -> list[PredictionRow]:
        return [
            PredictionRow(eid, key, score, self.model_version, ts, self.processed_ts,
                          self.model_name)
            for eid, key, score, ts in zip(self.event_ids, self.keys, self.scores,
                                           self.event_ts, strict=True)
        ]

    @classmethod
    def from_rows(cls, rows: Sequence[PredictionRow]) -> Predictions:
        """Columns of ``rows``, which must share model, version and processing time."""
        first = rows[0]
        return cls([r.event_id for r in rows], [r.key for r in rows], [r.score for r in rows],
                   [r.event_ts for r in rows], first.processed_ts, first.model_name,
                   first.model_version)
