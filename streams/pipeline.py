"""The batch-native hot path: Kafka batch -> decode -> infer -> Redis + topic -> commit.

One ``HotPath`` owns one confluent-kafka consumer in the app's consumer group and runs in its
own thread, off Faust's event loop, so inference never stalls the loop's heartbeats. This is
the one place that decides when input offsets are committed: after both sinks and the
dead-letter topic confirmed the whole batch (at-least-once; replays are idempotent in Redis).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Message, TopicPartition

from connectors.dead_letter import DeadLetterWriter
from connectors.predictions_sink import PredictionsTopicSink
from connectors.records import now_ms
from connectors.redis_sink import RedisPredictionSink, RedisRecommendationSink
from streams.assignment import Assignment, GroupAssignment
from streams.batcher import Batcher
from streams.handlers import Handler, Outputs
from streams.learning import Learner
from streams.metrics import PipelineMetrics
from streams.validate import Rejected

__all__ = ["HotPath", "Sinks", "commit_offsets"]

log = logging.getLogger(__name__)


@dataclass
class Sinks:
    """Everything a batch is written to before its offsets may be committed."""

    redis: RedisPredictionSink
    topic: PredictionsTopicSink | None
    dead_letters: DeadLetterWriter
    recommendations: RedisRecommendationSink | None = None

    def write(self, outputs: Outputs) -> None:
        if outputs.predictions:
            self.redis.write(outputs.predictions)
            if self.topic is not None:
                self.topic.write_batch(outputs.predictions)
        if self.recommendations is not None and outputs.recommendations:
            self.recommendations.write(outputs.recommendations)


def commit_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Next offset to read per partition: one past the highest offset in ``messages``."""
    highest: dict[tuple[str, int], int] = {}
    for msg in messages:
        tp = (msg.topic(), msg.partition())
        offset = msg.offset()
        if offset > highest.get(tp, -1):
            highest[tp] = offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]


class HotPath:
    """One consumer's loop. ``model_lock`` keeps learning steps out of a batch's inference.

    ``learner`` (optional) takes the batch's feedback records and learns from them after the
    batch's inference, so the serving model changes between batches, never within one.
    """

    def __init__(
        self,
        consumer: Consumer,
        assignment: Assignment,
        batcher: Batcher,
        handler: Handler,
        sinks: Sinks,
        metrics: PipelineMetrics,
        *,
        model_lock: threading.Lock | None = None,
        learner: Learner | None = None,
        on_batch: Callable[[Any], None] | None = None,
        retry_delay_s: float = 0.5,
    ) -> None:
        self.consumer = consumer
        self.assignment = assignment
        self.batcher = batcher
        self.handler = handler
        self.sinks = sinks
        self.metrics = metrics
        self.model_lock = model_lock or threading.Lock()
        self.learner = learner
        self.on_batch = on_batch
        self.retry_delay_s = retry_delay_s
        self._written: dict[tuple[str, int], int] = {}

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; then commit what was written and close."""
        self.assignment.start(self.consumer, self._commit_written, self._forget)
        try:
            while not stop.is_set():
                idle = not self.assignment.owned
                self.assignment.apply_pending(self.consumer, block_s=0.1 if idle else 0.0)
                if not self.assignment.owned and not isinstance(self.assignment,
                                                                GroupAssignment):
                    continue
                messages = self.batcher.next_batch()
                if messages:
                    self._process_durably(messages, stop)
                elif self.learner is not None:
                    with self.model_lock:
                        self.learner.idle()
        finally:
            self._commit_written(None)
            if self.learner is not None:
                self.learner.close()
            self.assignment.stop()
            self.consumer.close()  # leaves the group at once: partitions move without waiting

    def _commit_written(self, only: set[tuple[str, int]] | None) -> None:
        """Synchronously commit the offsets of everything written (for ``only`` partitions)."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._written.items()
                   if only is None or (t, p) in only]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # e.g. we already lost the partitions to another member
            log.info("offset commit skipped: %s", exc)

    def written_offsets(self) -> dict[tuple[str, int], int]:
        """Next offset per partition whose batches are durably written (for checkpoints)."""
        return dict(self._written)

    def _forget(self, partitions: set[tuple[str, int]]) -> None:
        for tp in partitions:
            self._written.pop(tp, None)

    def _process_durably(self, messages: list[Message], stop: threading.Event) -> None:
        """Retry a batch whose sinks failed (they are idempotent) rather than drop or skip it."""
        delay = self.retry_delay_s
        while True:
            try:
                self.process(messages)
                return
            except Exception:
                if stop.is_set():
                    log.error("stopping with an unwritten batch; it will be re-delivered")
                    return
                log.exception("writing a batch failed; retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def process(self, messages: list[Message]) -> None:
        """One batch, end to end. Raises if a sink failed; nothing is committed then."""
        started = time.perf_counter()
        feedback: list[Message] = []
        if self.learner is not None:
            topic = self.learner.feedback_topic
            feedback = [m for m in messages if m.topic() == topic]
            events = [m for m in messages if m.topic() != topic] if feedback else messages
        else:
            events = messages
        batch, rejected = self.handler.decode(events)
        with self.model_lock:
            batch, scores = self._score_isolating(batch, rejected)
            outputs = self.handler.outputs(batch, scores, now_ms())
            if self.learner is not None:
                self.learner.process(batch, scores, feedback, rejected)
        self.sinks.write(outputs)
        for bad in rejected:
            self._dead_letter(bad)
        self.sinks.dead_letters.flush()
        written = now_ms()
        offsets = commit_offsets(messages)
        for tp in offsets:
            self._written[(tp.topic, tp.partition)] = tp.offset
        self.consumer.commit(offsets=offsets, asynchronous=True)
        service_ms = (time.perf_counter() - started) * 1000
        self.batcher.limit.observe(len(messages), service_ms)
        self.metrics.record_batch(len(batch), len(rejected), written - batch.ts,
                                  self.batcher.limit.current)
        if self.learner is not None:
            with self.model_lock:
                self.learner.idle()
        if self.on_batch is not None:
            self.on_batch(batch)

    def _dead_letter(self, bad: Rejected) -> None:
        msg = bad.msg
        self.sinks.dead_letters.send(
            source_topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
            key=msg.key(), value=msg.value(), reason=bad.reason, error_type=bad.error_type,
        )

    def _score_isolating(self, batch: Any, rejected: list[Rejected]) -> tuple[Any, np.ndarray]:
        """Scores for ``batch``. A failing batch is retried once, then split in halves until
        the records that make the model fail are isolated; those go to ``rejected``."""
        if not len(batch):
            return batch, np.zeros(0, np.float32)
        try:
            return batch, self.handler.score(batch)
        except Exception:
            log.warning("model failed on a batch of %d; retrying once", len(batch))
        scored: dict[int, float] = {}
        self._bisect(batch, list(range(len(batch))), rejected, scored, retry=True)
        kept = sorted(scored)
        return batch.take(kept), np.asarray([scored[i] for i in kept], np.float32)

    def _bisect(self, batch: Any, index: list[int], rejected: list[Rejected],
                scored: dict[int, float], retry: bool = False) -> None:
        try:
            scores = self.handler.score(batch.take(index)).tolist()
        except Exception as exc:
            if len(index) == 1:
                msg = batch.messages[index[0]]
                rejected.append(Rejected(msg, f"model error: {exc!r}", "model"))
                return
            half = len(index) // 2
            self._bisect(batch, index[:half], rejected, scored)
            self._bisect(batch, index[half:], rejected, scored)
            return
        if retry:
            log.info("retry of a batch of %d succeeded", len(index))
        scored.update(zip(index, scores, strict=True))
