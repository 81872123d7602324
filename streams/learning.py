"""Online learning inside the hot path: join feedback, take gradient steps, keep in sync.

Runs under the hot path's model lock, after a batch's inference and before its outputs are
written, so the serving model changes only between batches and every prediction carries the
version (``v1+u<updates>``) it was made with.

* ``FeedbackLearner``: label records arrive on their own topic, are joined to the features
  seen at prediction time (``streams.join``), and feed optimiser steps (the classifier).
* ``InlineLearner``: the label is a field of the input itself (test-then-train): the batch
  was scored first, then is learned from (the recommender's ratings).

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

from streaminfer.errors import InvalidRecord
from streaminfer.models.base import Model
from streaminfer.models.sync import Sync
from streaminfer.streams.app import Learning
from streaminfer.streams.batch import Batch, Rejected, take_rows
from streaminfer.streams.candidates import Candidates
from streaminfer.streams.decode import RecordDecoder
from streaminfer.streams.join import Joined, JoinState
from streaminfer.streams.user_state import UserState

__all__ = ["FeedbackLearner", "InlineLearner", "Learner", "LearnerHooks", "labels_of",
           "step_size"]

log = logging.getLogger(__name__)

#: While batches flow, peers' parameter updates are polled at most this often (seconds).
SYNC_POLL_BUSY_S = 0.05


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
    #: shadow/canary versions: scored on the same labels, then learning from them too
    candidates: Candidates | None = None


@dataclass
class Learner:
    """What both learners share: step accounting, sync, metrics and periodic side work."""

    model: Model
    learn_batch_size: int = 8
    hooks: LearnerHooks = field(default_factory=LearnerHooks)
    feedback_topic: str | None = None
    #: at most this many optimiser steps per micro-batch (0: no bound), see ``step_size``
    max_steps: int = 4
    #: labels in a micro-batch from which it takes one step (0: off), see ``step_size``
    one_step_labels: int = 0
    steps: int = 0
    learned: int = 0
    _last_side_work: float = field(default_factory=time.monotonic)
    _last_sync_poll: float = float("-inf")

    def process(self, batch: Batch, scores: np.ndarray, feedback: list[Message],
                rejected: list[Rejected]) -> None:
        raise NotImplementedError

    def _learn(self, x: Any, y: np.ndarray, served: np.ndarray) -> None:
        """Progressive metrics first (scores served before learning), then optimiser steps."""
        if not len(y):
            return
        if self.hooks.progressive is not None:
            self.hooks.progressive.update(served, y)
        candidates = self.hooks.candidates
        if candidates:
            candidates.test(x, y, self.model)
        size = step_size(len(y), self.learn_batch_size, self.max_steps, self.one_step_labels)
        learn_steps = getattr(self.model, "learn_steps", None)
        if learn_steps is not None and not candidates:
            # the model takes the micro-batch's steps in one call (the recommender: what
            # each step would redo, such as ids to rows, is done once)
            for _ in learn_steps(x, y, size):
                self._stepped()
            self.learned += len(y)
            return
        for start in range(0, len(y), size):
            rows = range(start, min(start + size, len(y)))
            chunk = x[start:start + size] if isinstance(x, np.ndarray) else take_rows(x, rows)
            self.model.learn(chunk, y[start:start + size])
            if candidates:
                candidates.train(chunk, y[start:start + size])
            self._stepped()
        self.learned += len(y)

    def _stepped(self) -> None:
        self.steps += 1
        if self.hooks.sync is not None:
            self.hooks.sync.after_learn()

    def idle(self, busy: bool = False) -> None:
        """Between batches, once their offsets are recorded (so a checkpoint taken here is
        consistent), and when no data came: apply peers' updates, then side work.

        ``busy`` (a batch was just processed): peers' updates are polled at most every
        ``SYNC_POLL_BUSY_S``, a fraction of the publishing interval (``sync_every_ms``), as a
        poll per batch cost the hot path ~1 ms at 60 batches/s (the recommender).
        """
        now = time.monotonic()
        if self.hooks.sync is not None and (not busy
                                            or now - self._last_sync_poll >= SYNC_POLL_BUSY_S):
            self._last_sync_poll = now
            self.hooks.sync.poll()
        if now - self._last_side_work < 1.0:
            return
        self._last_side_work = now
        if self.hooks.scalars is not None and self.hooks.progressive is not None:
            self.hooks.scalars(self.model.version.updates,
                               {**self.hooks.progressive.snapshot(), **self._side_scalars()})
        if self.hooks.publish_params is not None:
            _side_work("publishing parameters", self.hooks.publish_params, self.model)
        if self.hooks.checkpoint is not None:
            _side_work("a checkpoint", self.hooks.checkpoint, False)

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
            _side_work("the final checkpoint", self.hooks.checkpoint, True)
        if self.hooks.sync is not None:
            self.hooks.sync.close()


# The unbound methods: a fifth of the cost of ``methodcaller`` per message (~20 against
# ~100 ns), which the label path pays for every event and label.
_PARTITION, _OFFSET = Message.partition, Message.offset


def _by_partition(messages: list[Message]) -> list[tuple[int, np.ndarray | None]]:
    """``(partition, rows)`` per partition of ``messages``; ``rows`` is ``None`` when they all
    share one (the usual case: a fetch is one partition's records)."""
    partitions = np.fromiter(map(_PARTITION, messages), np.int64, len(messages))
    if not len(partitions):
        return []
    if partitions.min() == partitions.max():
        return [(int(partitions[0]), None)]
    # not np.unique: its first call imports numpy.ma (~25 ms on the hot path)
    return [(p, np.flatnonzero(partitions == p)) for p in sorted(set(partitions.tolist()))]


def _take(values: Any, rows: np.ndarray | None) -> Any:
    """``values`` at ``rows`` (an array or a list); all of them when ``rows`` is ``None``."""
    if rows is None:
        return values
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[r] for r in rows.tolist()]


def _side_work(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run optional side work; a failure (Redis down, a full checkpoint disk) is logged and
    tried again next period: it must never stop the lane that serves predictions."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("%s failed, will retry: %s: %s", what, type(exc).__name__, exc)


def step_size(labels: int, batch_size: int, max_steps: int, one_step_labels: int = 0) -> int:
    """Examples per optimiser step for a micro-batch that brought ``labels`` labels.

    The adaptive rule (docs/learning.md): step on whatever labels the micro-batch brought, in
    steps of ``batch_size`` (a micro-batch with fewer labels is one smaller step), at most
    ``max_steps`` steps (0: no bound). Many labels in one micro-batch mean they arrive faster
    than steps can run, so from there the steps merge further: at most
    ``one_step_labels // labels`` steps (0: off), one step from ``one_step_labels`` labels on.
    At low rates the model moves after every few labels (sample efficiency); at saturation
    the learning cost per event falls as the rate grows.
    """
    steps = -(-labels // batch_size)
    if max_steps > 0:
        steps = min(steps, max_steps)
    if one_step_labels > 0:
        steps = min(steps, max(1, one_step_labels // max(labels, 1)))
    return -(-labels // max(steps, 1)) if labels else batch_size


def _usable(labels: np.ndarray, learning: Learning) -> np.ndarray:
    """Row mask of usable labels for the loss (``bce``: [0, 1]; ``ce``: class indices;
    otherwise finite)."""
    ok = np.isfinite(labels)
    if learning.loss == "bce":
        ok &= (labels >= 0) & (labels <= 1)
    elif learning.loss == "ce":
        ok &= (labels >= 0) & (np.rint(labels) == labels)
    return ok


def _label_reason(learning: Learning) -> str:
    return {"bce": "expected a number in [0, 1]",
            "ce": "expected a class index (integer >= 0)"}.get(
        learning.loss if isinstance(learning.loss, str) else "", "expected a finite number")


def labels_of(batch: Batch, learning: Learning, rejected: list[Rejected]
              ) -> tuple[Batch, np.ndarray]:
    """The batch's label column as float32, rows with unusable labels rejected (naming the
    field and what the loss needs)."""
    raw = batch.columns[learning.label]
    try:
        labels = np.asarray(raw, np.float64)
    except (TypeError, ValueError):
        labels = np.asarray([v if isinstance(v, int | float) else np.nan for v in raw],
                            np.float64)
    ok = _usable(labels, learning)
    if not ok.all():
        reason = str(InvalidRecord(learning.label, _label_reason(learning)))
        for i in np.flatnonzero(~ok).tolist():
            rejected.append(Rejected(batch.messages[i], reason, "validation"))
        keep = np.flatnonzero(ok).tolist()
        batch, labels = batch.take(keep), labels[keep]
    return batch, labels.astype(np.float32)


@dataclass
class FeedbackLearner(Learner):
    """Labels from their own topic: join them to remembered events, then learn."""

    join: JoinState | None = None
    labels: RecordDecoder | None = None
    learning: Learning = field(default_factory=Learning)

    def process(self, batch: Batch, scores: np.ndarray, feedback: list[Message],
                rejected: list[Rejected]) -> None:
        assert self.join is not None and self.labels is not None
        joined = Joined()
        if len(batch):
            self._remember(batch, self.learning.served(scores), joined)
        if feedback:
            fb, bad = self.labels.decode(feedback)
            rejected.extend(bad)
            fb, labels = labels_of(fb, self.learning, rejected)
            offsets = np.fromiter(map(_OFFSET, fb.messages), np.int64, len(fb))
            for partition, rows in _by_partition(fb.messages):
                joined.extend(self.join.add_feedback(
                    partition, _take(offsets, rows), _take(fb.event_ids, rows),
                    _take(labels, rows), _take(fb.ts, rows)))
        self.join.expire()
        if len(joined):
            x, y, served = joined.arrays()
            self._learn(x, y, served)

    def _remember(self, batch: Batch, served: np.ndarray, joined: Joined) -> None:
        assert self.join is not None
        features = np.asarray(batch.features, np.float32)
        for partition, rows in _by_partition(batch.messages):
            first = batch.messages[0 if rows is None else int(rows[0])].offset()
            joined.extend(self.join.add_events(
                partition, first, _take(batch.event_ids, rows), _take(batch.ts, rows),
                _take(features, rows), _take(served, rows)))

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        if self.join is not None:
            out.update(joined=self.join.joined, waited=self.join.waited,
                       expired_events=self.join.expired_events,
                       expired_feedback=self.join.expired_feedback, evicted=self.join.evicted,
                       join_size=self.join.size)
        return out


@dataclass
class InlineLearner(Learner):
    """The label is a column of the input: test-then-train on each scored batch.

    ``state`` (optional) keeps each touched key's rows in the partition's table (written
    at most every ``state.flush_s``), so they move with the partition (``streams.user_state``).
    """

    learning: Learning = field(default_factory=Learning)
    state: UserState | None = None

    def process(self, batch: Batch, scores: np.ndarray, feedback: list[Message],
                rejected: list[Rejected]) -> None:
        if not len(batch):
            return
        # The handler already rejected rows without a usable label (``labels_of``).
        labels = np.asarray(batch.columns[self.learning.label], np.float32)
        self._learn(batch.features, labels, self.learning.served(scores))
        if self.state is not None:
            self.state.save(batch.keys, [m.partition() for m in batch.messages])

    def idle(self, busy: bool = False) -> None:
        if self.state is not None:  # a quiet stream still writes its last touched users
            self.state.flush_due()
        super().idle(busy)

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        if self.state is not None:
            out.update(self.state.stats())
        return out

    def close(self) -> None:
        if self.state is not None:
            _side_work("writing the touched users' rows", self.state.flush)
        super().close()
