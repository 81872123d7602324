"""Online learning inside the hot path: join feedback, take gradient steps, keep in sync.

Runs under the hot path's model lock, after a batch's inference and before its outputs are
written, so the serving model changes only between batches and every prediction carries the
version (``v1+u<updates>``) it was made with.

* ``FeedbackLearner`` (classifier): feedback records arrive on their own topic, are joined to
  the features seen at prediction time (``streams.join``), and feed optimiser steps.
* ``RatingLearner`` (recommender): a rating is both the thing to predict and its feedback
  (test-then-train): the batch's ratings were scored first, then are learned from.

Both report progressive (test-then-train) metrics from the scores that were actually served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from confluent_kafka import Message
from streaminfer.connectors.avro import RecordCodec
from streaminfer.models.base import Model
from streaminfer.models.recommender import Interactions
from streaminfer.models.sync import Sync
from streaminfer.streams.join import Joined, JoinState
from streaminfer.streams.user_state import UserState
from streaminfer.streams.validate import EventBatch, RatingBatch, Rejected, decode_feedback

__all__ = ["FeedbackLearner", "Learner", "LearnerHooks", "RatingLearner"]

log = logging.getLogger(__name__)


class Progressive(Protocol):
    def update(self, scores: Any, targets: Any) -> None: ...
    def snapshot(self) -> dict[str, float]: ...


@dataclass
class LearnerHooks:
    """Optional collaborators: parameter sync, metrics, checkpoints, TensorBoard, params."""

    progressive: Progressive | None = None
    sync: Sync | None = None
    checkpoint: Callable[[bool], None] | None = None  # called with force=True at close
    scalars: Callable[[int, dict[str, float]], None] | None = None
    publish_params: Callable[[Model], None] | None = None


@dataclass
class Learner:
    """What both learners share: step accounting, sync, metrics and periodic side work."""

    model: Model
    learn_batch_size: int = 32
    hooks: LearnerHooks = field(default_factory=LearnerHooks)
    feedback_topic: str | None = None
    steps: int = 0
    learned: int = 0
    _last_side_work: float = field(default_factory=time.monotonic)

    def process(self, batch: Any, scores: np.ndarray, feedback: list[Message],
                rejected: list[Rejected]) -> None:
        raise NotImplementedError

    def _learn(self, x: Any, y: np.ndarray, served: np.ndarray) -> None:
        """Progressive metrics first (scores served before learning), then optimiser steps."""
        if not len(y):
            return
        if self.hooks.progressive is not None:
            self.hooks.progressive.update(served, y)
        size = self.learn_batch_size
        for start in range(0, len(y), size):
            part = slice(start, start + size)
            chunk = x[part] if not isinstance(x, Interactions) else Interactions(
                x.users[part], x.items[part])
            self.model.learn(chunk, y[part])
            self.steps += 1
            if self.hooks.sync is not None:
                self.hooks.sync.after_learn()
        self.learned += len(y)

    def idle(self) -> None:
        """Between batches, once their offsets are recorded (so a checkpoint taken here is
        consistent), and when no data came: apply peers' updates, then side work."""
        if self.hooks.sync is not None:
            self.hooks.sync.poll()
        now = time.monotonic()
        if now - self._last_side_work < 1.0:
            return
        self._last_side_work = now
        if self.hooks.scalars is not None and self.hooks.progressive is not None:
            self.hooks.scalars(self.model.version.updates,
                               {**self.hooks.progressive.snapshot(), **self._side_scalars()})
        if self.hooks.publish_params is not None:
            self.hooks.publish_params(self.model)
        if self.hooks.checkpoint is not None:
            self.hooks.checkpoint(False)

    def _side_scalars(self) -> dict[str, float]:
        return {}

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"learned": self.learned, "steps": self.steps}
        if self.hooks.progressive is not None:
            out.update(self.hooks.progressive.snapshot())
        if self.hooks.sync is not None:
            out["sync"] = self.hooks.sync.stats()
        return out

    def close(self) -> None:
        if self.hooks.checkpoint is not None:
            self.hooks.checkpoint(True)
        if self.hooks.sync is not None:
            self.hooks.sync.close()


@dataclass
class FeedbackLearner(Learner):
    """Classifier: join the batch's feedback to remembered events, then learn."""

    join: JoinState | None = None
    codec: RecordCodec | None = None

    def process(self, batch: EventBatch, scores: np.ndarray, feedback: list[Message],
                rejected: list[Rejected]) -> None:
        assert self.join is not None and self.codec is not None
        joined = Joined()
        if len(batch):
            self._remember(batch, scores, joined)
        if feedback:
            fb, bad = decode_feedback(feedback, self.codec)
            rejected.extend(bad)
            by_partition: dict[int, list[int]] = {}
            for row, msg in enumerate(fb.messages):
                by_partition.setdefault(msg.partition(), []).append(row)
            for partition, rows in by_partition.items():
                part = self.join.add_feedback(
                    partition, [fb.messages[r].offset() for r in rows],
                    [fb.event_ids[r] for r in rows], fb.labels[rows], fb.ts[rows])
                _extend(joined, part)
        self.join.expire()
        if len(joined):
            x, y, served = joined.arrays()
            self._learn(x, y, served)

    def _remember(self, batch: EventBatch, scores: np.ndarray, joined: Joined) -> None:
        assert self.join is not None
        partitions = np.fromiter((m.partition() for m in batch.messages), np.int64, len(batch))
        for partition in np.unique(partitions).tolist():
            rows = np.flatnonzero(partitions == partition)
            first_offset = batch.messages[int(rows[0])].offset()
            part = self.join.add_events(partition, first_offset,
                                        [batch.event_ids[r] for r in rows.tolist()],
                                        batch.ts[rows], batch.features[rows], scores[rows])
            _extend(joined, part)

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        if self.join is not None:
            out.update(joined=self.join.joined, expired_events=self.join.expired_events,
                       expired_feedback=self.join.expired_feedback, join_size=self.join.size)
        return out


@dataclass
class RatingLearner(Learner):
    """Recommender: test-then-train on the ratings themselves.

    ``users`` (optional) keeps each touched user's rows in the partition's table after the
    step, so they move with the partition (``streams.user_state``).
    """

    users: UserState | None = None

    def process(self, batch: RatingBatch, scores: np.ndarray, feedback: list[Message],
                rejected: list[Rejected]) -> None:
        if len(batch):
            self._learn(Interactions(batch.users, batch.items), batch.ratings, scores)
            if self.users is not None:
                self.users.save(batch.users, [m.partition() for m in batch.messages])

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        if self.users is not None:
            out.update(self.users.stats())
        return out


def _extend(joined: Joined, part: Joined) -> None:
    joined.event_ids += part.event_ids
    joined.features += part.features
    joined.labels += part.labels
    joined.scores += part.scores
