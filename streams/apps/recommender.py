"""The built-in recommender: streaming matrix factorisation on ratings, test-then-train.

Each rating is scored (the predicted rating), then learnt from; each rated user's top-N
items go to ``recs:{user}``. User rows are keyed state: they move with the user's partition.
"""

from __future__ import annotations

from typing import Any

from streaminfer.models.base import Model
from streaminfer.models.recommender import Interactions, MatrixFactorization
from streaminfer.streams.app import App, Input, KeyedState, Learning, Outputs
from streaminfer.streams.settings import Settings

__all__ = ["app"]


def _model(settings: Settings) -> Model:
    tuning = {k: v for k, v in (("lr", settings.lr), ("optimizer", settings.optimizer),
                                ("l2", settings.l2)) if v is not None}
    return MatrixFactorization(seed=settings.seed, device=settings.device, amp=settings.amp,
                               **tuning)


def _pairs(columns: dict[str, Any]) -> Interactions:
    return Interactions(columns["user"], columns["item"])


def app(settings: Settings) -> App:
    """``schemas/rating.avsc`` ratings on ``--ratings-topic``, keyed by user."""
    return App(
        "recommender",
        input=Input(settings.ratings_topic, schema="rating", key="user"),
        features=_pairs,
        model=_model,
        outputs=Outputs(["score"], activation="none", topic=settings.predictions_topic,
                        top_n=settings.top_n),
        # at most 16 steps per micro-batch: ~0.13 ms each (MatrixFactorization.learn_steps),
        # and fewer, larger steps lose RMSE (docs/learning.md)
        learning=Learning(label="rating", loss="mse", batch_size=32, max_steps=16,
                          one_step_labels=0),
        state=KeyedState("users"),
    )
