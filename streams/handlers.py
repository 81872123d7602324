"""Per-app logic of the hot path: how to decode a batch, score it and shape the outputs.

The pipeline knows only this small surface, so adding an app means adding a handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from confluent_kafka import Message
from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.prediction import Predictions
from streaminfer.connectors.redis_sink import RecommendationRow
from streaminfer.models.base import Model
from streaminfer.models.recommender import Interactions, MatrixFactorization
from streaminfer.streams.validate import (
    EventBatch,
    RatingBatch,
    Rejected,
    decode_events,
    decode_ratings,
)

__all__ = ["ClassifierHandler", "Handler", "Outputs", "RecommenderHandler"]


@dataclass
class Outputs:
    """What one batch writes: predictions for Redis and the topic, optional top-N lists."""

    predictions: Predictions
    recommendations: list[RecommendationRow] = field(default_factory=list)


class Handler(Protocol):
    model: Model

    def decode(self, messages: Sequence[Message]) -> tuple[Any, list[Rejected]]: ...
    def score(self, batch: Any) -> np.ndarray: ...
    def outputs(self, batch: Any, scores: np.ndarray, processed_ts: int) -> Outputs: ...


def _predictions(batch: Any, keys: list[str], scores: np.ndarray, model: Model,
                 processed_ts: int) -> Predictions:
    return Predictions(batch.event_ids, keys, scores.tolist(), batch.ts.tolist(), processed_ts,
                       model.name, str(model.version))


@dataclass
class ClassifierHandler:
    """Events with a feature vector -> probability of the positive class."""

    model: Model
    codec: RecordCodec
    num_features: int

    def decode(self, messages: Sequence[Message]) -> tuple[EventBatch, list[Rejected]]:
        return decode_events(messages, self.codec, self.num_features)

    def score(self, batch: EventBatch) -> np.ndarray:
        return self.model.predict(batch.features).numpy()

    def outputs(self, batch: EventBatch, scores: np.ndarray, processed_ts: int) -> Outputs:
        return Outputs(_predictions(batch, batch.keys, scores, self.model, processed_ts))


@dataclass
class RecommenderHandler:
    """Ratings -> predicted rating; the top-N items of every user in the batch refreshed.

    Learning from the same ratings (test-then-train) is ``streams.learning.RatingLearner``'s.
    """

    model: MatrixFactorization
    codec: RecordCodec
    top_n: int = 10

    def decode(self, messages: Sequence[Message]) -> tuple[RatingBatch, list[Rejected]]:
        return decode_ratings(messages, self.codec)

    def score(self, batch: RatingBatch) -> np.ndarray:
        return self.model.predict(Interactions(batch.users, batch.items)).numpy()

    def outputs(self, batch: RatingBatch, scores: np.ndarray, processed_ts: int) -> Outputs:
        out = Outputs(_predictions(batch, batch.users, scores, self.model, processed_ts))
        if self.top_n:
            newest: dict[str, tuple[int, str]] = {}
            for user, ts, eid in zip(batch.users, batch.ts.tolist(), batch.event_ids,
                                     strict=True):
                if user not in newest or (ts, eid) > newest[user]:
                    newest[user] = (ts, eid)
            version = str(self.model.version)
            ranked = self.model.top_n_many(list(newest), self.top_n)
            for (user, (ts, eid)), best in zip(newest.items(), ranked, strict=True):
                out.recommendations.append(RecommendationRow(
                    user=user, items=tuple(i for i, _ in best),
                    scores=tuple(s for _, s in best), event_id=eid, event_ts=ts,
                    processed_ts=processed_ts, model_version=version))
        return out
