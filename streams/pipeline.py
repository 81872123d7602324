"""The batch-native hot path: Kafka batch -> decode -> infer -> Redis + topic -> commit.

One ``HotPath`` owns one confluent-kafka consumer in the app's consumer group and runs in its
own thread, off Faust's event loop, so inference never stalls the loop's heartbeats. This is
the one place that decides when input offsets are committed: after both sinks and the
dead-letter topic confirmed the whole batch (at-least-once; replays are idempotent in Redis).

When a sink refuses writes (Redis or the broker down, Redis out of memory), the lane stops
taking records: it pauses its partitions (``Consumer.pause``, which also drops what librdkafka
had prefetched for them), keeps applying assignment changes, commits nothing new, and resumes
by itself once the writer got a batch through. Memory stays bounded by the batches already in
flight: the one being retried, one queued behind it, and one the lane had prepared, each at
most ``--batch-max-bytes`` of record values (plus their decoded columns).

A process frozen past its session (SIGSTOP) may wake up after its partitions moved. The lane
then commits nothing (``streams.fence``): it drops its partitions uncommitted and takes
whatever Faust assigns next from the committed offsets; its in-flight batches are still
written, which Redis's event-time guard makes harmless (never older over newer).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Message, TopicPartition

from streaminfer.connectors.dead_letter import DeadLetterWriter
from streaminfer.connectors.predictions_sink import EncodedPredictions, PredictionsTopicSink
from streaminfer.connectors.records import now_ms
from streaminfer.connectors.redis_sink import (
    PackedWrite,
    RedisPredictionSink,
    RedisRecommendationSink,
)
from streaminfer.connectors.transactions import PartitionTransactions, ProducerFenced
from streaminfer.streams.assignment import Assignment, FollowedAssignment, GroupAssignment
from streaminfer.streams.batch import Rejected
from streaminfer.streams.batcher import Batcher
from streaminfer.streams.fence import FreezeWatch, process_watch
from streaminfer.streams.guard import ModelGuard
from streaminfer.streams.handlers import Handler, Written
from streaminfer.streams.learning import Learner
from streaminfer.streams.metrics import LaneRecorder
from streaminfer.streams.writer import BatchWriter

__all__ = ["HotPath", "Prepared", "Sinks", "Staged", "commit_offsets", "score_isolating"]

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A batch ready for the writer: its messages, staged writes and rejects."""

    messages: list[Message]
    batch: Any
    staged: Staged
    rejected: list[Rejected]
    prepare_s: float
    group_metadata: Any = None  # exactly-once: the lane consumer's, for its offsets


@dataclass
class Staged:
    """A batch's sink writes, encoded and packed, waiting only for I/O."""

    outputs: Written
    topic_records: EncodedPredictions | None
    redis_calls: PackedWrite | None
    shadow_calls: PackedWrite | None = None
    #: the topic records are queued in the producer: a retry after a Redis failure only
    #: waits for them instead of queueing them again (no duplicate per retry)
    topic_sent: bool = False
    #: exactly-once: Redis written, and the input partitions whose transactions committed
    #: (a retry after a later partition failed does not repeat them)
    redis_done: bool = False
    committed: set[int] = field(default_factory=set)


@dataclass
class Sinks:
    """Everything a batch is written to before its offsets may be committed."""

    redis: RedisPredictionSink
    topic: PredictionsTopicSink | None
    dead_letters: DeadLetterWriter
    recommendations: RedisRecommendationSink | None = None
    #: ``shadow:{app}:{key}``: a shadow version's outputs. Best effort: a failed write is
    #: logged and handed to ``on_shadow_error`` (counted), never retried or raised
    shadow: RedisPredictionSink | None = None
    on_shadow_error: Callable[[BaseException], None] | None = None

    def stage(self, outputs: Written) -> Staged:
        """The CPU part of the writes (encoding records, packing script arguments), which the
        hot path does on the lane's thread so the writer thread only waits on I/O."""
        if not len(outputs.predictions):
            return Staged(outputs, None, None)
        topic = self.topic.encode(outputs.predictions) if self.topic is not None else None
        shadow = (self.shadow.pack_columns(outputs.shadow)
                  if self.shadow is not None and outputs.shadow is not None else None)
        return Staged(outputs, topic, self.redis.pack_columns(outputs.predictions), shadow)

    def write_shadow(self, staged: Staged) -> None:
        if staged.shadow_calls is None or self.shadow is None:
            return
        calls, staged.shadow_calls = staged.shadow_calls, None  # once, even if a retry comes
        try:
            self.shadow.write_packed(calls)
        except Exception as exc:
            log.warning("shadow predictions not written (the served ones are): %r", exc)
            if self.on_shadow_error is not None:
                self.on_shadow_error(exc)

    def write_redis_once(self, staged: Staged) -> None:
        """Redis (predictions, top-N lists) for the exactly-once path: once per batch."""
        if staged.redis_done:
            return
        if staged.redis_calls is not None:
            self.redis.write_packed(staged.redis_calls)
        recommendations = staged.outputs.recommendations
        if self.recommendations is not None and recommendations:
            self.recommendations.write(recommendations)
        staged.redis_done = True
        self.write_shadow(staged)

    def write(self, staged: Staged) -> None:
        """Redis and Kafka in parallel: queue the topic records, write Redis while Kafka
        acknowledges them, then wait for those acknowledgements."""
        if staged.redis_calls is not None:
            if (self.topic is not None and staged.topic_records is not None
                    and not staged.topic_sent):
                self.topic.send(staged.topic_records)
                staged.topic_sent = True
            self.redis.write_packed(staged.redis_calls)
            if self.topic is not None:
                try:
                    self.topic.confirm()
                except Exception:
                    staged.topic_sent = False  # not acknowledged: send again next attempt
                    raise
        recommendations = staged.outputs.recommendations
        if self.recommendations is not None and recommendations:
            self.recommendations.write(recommendations)
        self.write_shadow(staged)


def commit_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Next offset to read per partition: one past its last record in ``messages``, which is
    its highest (a consumer delivers a partition's records in offset order). Built from the
    unbound ``Message`` methods, at C speed: the writer runs this for every record."""
    places = zip(map(Message.topic, messages), map(Message.partition, messages), strict=True)
    last = dict(zip(places, map(Message.offset, messages), strict=True))
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


class HotPath:
    """One consumer's loop. ``model_lock`` keeps learning steps out of a batch's inference.

    ``guard`` (optional, ``streams.guard``): the model's circuit breaker and fallbacks;
    without it a failing batch is split and its bad records dead-lettered (``score_isolating``).

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
        metrics: LaneRecorder,
        *,
        model_lock: threading.Lock | None = None,
        learner: Learner | None = None,
        on_batch: Callable[[Any], None] | None = None,
        retry_delay_s: float = 0.5,
        guard: ModelGuard | None = None,
        transactions: PartitionTransactions | None = None,
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
        self.guard = guard
        self.transactions = transactions
        self._written: dict[tuple[str, int], int] = {}
        self._writer: BatchWriter | None = None
        self._to_commit: dict[tuple[str, int], int] = {}
        self._offsets_lock = threading.Lock()
        self._paused: set[tuple[str, int]] = set()
        self._watch: FreezeWatch | None = None
        self._freezes_seen = 0

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; then commit what was written and close."""
        # Everything alive now (libraries, the model) is long-lived: keep it out of the
        # garbage collector's full passes, whose pauses otherwise show up as p99 latency.
        gc.freeze()
        self._watch = process_watch()
        self._freezes_seen = self._watch.freezes
        self._writer = BatchWriter(self._write, stop, self.retry_delay_s,
                                   on_retry=self.metrics.sink_retry,
                                   on_write=self.metrics.sink_writing)
        if self.transactions is not None and isinstance(self.assignment, FollowedAssignment):
            self.assignment.before_acquire = self.transactions.claim
            self.assignment.after_release = self.transactions.release
            self.transactions.lazy = False
        self.assignment.start(self.consumer, self._commit_written, self._forget)
        try:
            while not stop.is_set():
                self.metrics.before_batch(stop)
                if self._watch.freezes != self._freezes_seen:
                    self._after_freeze()
                if self.transactions is not None and self.transactions.fenced:
                    self._drop_fenced()
                idle = not self.assignment.owned
                self.assignment.apply_pending(self.consumer, block_s=0.1 if idle else 0.0)
                if not self.assignment.owned and not isinstance(self.assignment,
                                                                GroupAssignment):
                    continue
                if self._writer.failing.is_set():
                    self._pause_owned()  # a sink is down: take nothing new until it is back
                    self._commit_new_offsets()
                    stop.wait(0.05)
                    continue
                if self._paused:
                    self._resume_paused()
                messages = self.batcher.next_batch()
                self._commit_new_offsets()
                self.metrics.update_lag(self.consumer, self.assignment.owned)
                if messages:
                    self.metrics.batch_fetched(len(messages))
                    self._submit(self.prepare(messages), stop)
                if self.learner is not None:
                    with self.model_lock:
                        self.learner.idle(busy=bool(messages))
        finally:
            self._writer.close()
            self._commit_written(None)
            if self.learner is not None:
                self.learner.close()
            self.assignment.stop()
            if self.transactions is not None:
                self.transactions.close()
            self.consumer.close()  # leaves the group at once: partitions move without waiting
            # Frozen objects are never collected, not even at interpreter exit: left frozen,
            # torch's triton bindings (imported by torch.optim via torch._dynamo) print a
            # thousand "nanobind: leaked ..." lines when the worker exits.
            gc.unfreeze()

    def _drop_fenced(self) -> None:
        """Exactly-once: another process holds these partitions' transactional ids now."""
        assert self.transactions is not None
        fenced = set(self.transactions.fenced)
        tps = {tp for tp in self.assignment.owned if tp[1] in fenced}
        if not tps or not isinstance(self.assignment, FollowedAssignment):
            return
        self.assignment.release_uncommitted(self.consumer, tps)
        if self._fenced():
            log.warning("fenced: partitions %s were taken over while this process was "
                        "frozen; no longer reading them", sorted(fenced))
            return
        # not frozen: we are still their rightful holder (the producer failed otherwise)
        log.warning("partitions %s: transactional producer lost; claiming them again and "
                    "reading from the committed offsets", sorted(fenced))
        self.assignment.acquire_again(self.consumer, tps)

    def _fenced(self) -> bool:
        """The process may have been frozen past its session: commit nothing."""
        watch = self._watch
        return watch is not None and (watch.suspect() or watch.freezes != self._freezes_seen)

    def _after_freeze(self) -> None:
        """Drop every partition uncommitted (their batches in flight are still written); Faust
        assigns them again, to this worker or another, and they restart at committed offsets."""
        assert self._watch is not None
        fence = getattr(self.assignment, "fence", None)
        if fence is not None:
            fence(self.consumer)
        self._freezes_seen = self._watch.freezes

    def _submit(self, prepared: Prepared, stop: threading.Event) -> None:
        """Queue a batch for the writer; while the writer retries a failed write, pause the
        partitions rather than letting librdkafka prefetch behind a blocked lane. A batch
        still held at stop is dropped uncommitted (it is read again)."""
        assert self._writer is not None
        while not self._writer.offer(prepared, 0.05):
            if self._writer.failing.is_set():
                self._pause_owned()
            if stop.is_set():
                return

    def _pause_owned(self) -> None:
        new = self.assignment.owned - self._paused
        if not new:
            return
        self.consumer.pause([TopicPartition(t, p) for t, p in sorted(new)])
        if not self._paused:
            log.warning("a sink refuses writes: pausing %d partition(s) until it is back",
                        len(new))
            self.metrics.sink_paused(True)
        self._paused |= new

    def _resume_paused(self) -> None:
        owned = self._paused & self.assignment.owned
        if owned:
            self.consumer.resume([TopicPartition(t, p) for t, p in sorted(owned)])
        log.info("sinks write again: resumed %d partition(s)", len(owned))
        self._paused.clear()
        self.metrics.sink_paused(False)

    def _commit_new_offsets(self) -> None:
        """Commit (async) what the writer finished, from this thread: the consumer is used by
        one thread only."""
        if not self._to_commit or self._fenced() or self.transactions is not None:
            return
        with self._offsets_lock:
            offsets, self._to_commit = self._to_commit, {}
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                             asynchronous=True)

    def _commit_written(self, only: set[tuple[str, int]] | None) -> None:
        """Synchronously commit the offsets of everything written (for ``only`` partitions)."""
        if self._writer is not None:
            self._writer.drain()
        with self._offsets_lock:
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._written.items()
                       if only is None or (t, p) in only]
            for tp in offsets:
                self._to_commit.pop((tp.topic, tp.partition), None)
        if not offsets or self.transactions is not None:  # exactly-once: committed already
            return
        if self._fenced():
            log.warning("not committing %d partition(s): this process was frozen and may have "
                        "lost them", len(offsets))
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # e.g. we already lost the partitions to another member
            log.warning("offsets %s not committed (their batches will be read again): %s",
                        [(tp.topic, tp.partition, tp.offset) for tp in offsets], exc)

    def written_offsets(self) -> dict[tuple[str, int], int]:
        """Next offset per partition whose batches are durably written. Waits for the batch
        being written, so the offsets match the model state (for consistent checkpoints)."""
        if self._writer is not None:
            self._writer.drain()
        with self._offsets_lock:
            return dict(self._written)

    def _forget(self, partitions: set[tuple[str, int]]) -> None:
        self._paused -= partitions
        with self._offsets_lock:
            for tp in partitions:
                self._written.pop(tp, None)
                self._to_commit.pop(tp, None)

    def process(self, messages: list[Message]) -> None:
        """One batch, end to end, on the calling thread (tests, benchmarks)."""
        self._write(self.prepare(messages))
        self._commit_new_offsets()

    def prepare(self, messages: list[Message]) -> Prepared:
        """Decode, score, learn from feedback: everything before the sinks."""
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
            fallback = None
            if self.guard is not None:
                batch, scores, fallback = self.guard.score(batch, rejected)
            else:
                batch, scores = score_isolating(self.handler, batch, rejected)
            outputs = self.handler.outputs(batch, scores, now_ms())
            if fallback is not None:
                outputs.predictions.fallback = fallback
            else:  # a canary serves its keys, a shadow is recorded (``streams.candidates``)
                candidates = getattr(self.handler, "candidates", None)
                if candidates:
                    outputs.shadow = candidates.serve(batch, outputs.predictions, scores)
            if self.learner is not None:
                self.learner.process(batch, scores, feedback, rejected)
        staged = self.sinks.stage(outputs)
        meta = (self.consumer.consumer_group_metadata() if self.transactions is not None
                else None)
        return Prepared(messages, batch, staged, rejected, time.perf_counter() - started, meta)

    def _write(self, prepared: Prepared) -> None:
        """Sinks, dead letters, then the offsets: raises (nothing committed) if a sink failed."""
        started = time.perf_counter()
        if self.transactions is not None:
            # dead letters first: at-least-once, and before the offsets commit with the batch
            for bad in prepared.rejected:
                self._dead_letter(bad)
            self.sinks.dead_letters.flush()
            try:
                self._write_transactions(prepared)
            except ProducerFenced as exc:
                log.warning("batch dropped uncommitted: %s", exc)
                return
        else:
            self.sinks.write(prepared.staged)
            for bad in prepared.rejected:
                self._dead_letter(bad)
            self.sinks.dead_letters.flush()
        written = now_ms()
        with self._offsets_lock:
            for tp in commit_offsets(prepared.messages):
                self._written[(tp.topic, tp.partition)] = tp.offset
                self._to_commit[(tp.topic, tp.partition)] = tp.offset
        # service time of the batch itself, not its wait behind the previous one
        service_ms = (time.perf_counter() - started + prepared.prepare_s) * 1000
        self.batcher.limit.observe(len(prepared.messages), service_ms)
        batch = prepared.batch
        self.metrics.record_batch(len(batch), len(prepared.rejected), written - batch.ts,
                                  self.batcher.limit.current, records=len(prepared.messages),
                                  service_s=service_ms / 1000, rejects=prepared.rejected)
        if self.on_batch is not None:
            self.on_batch(batch)

    def _write_transactions(self, prepared: Prepared) -> None:
        """Exactly-once: per input partition, its prediction records and its offsets (input
        and label topics) in one transaction; Redis is written inside the first one, before
        it commits (a failed transaction is aborted and the whole batch retried; partitions
        already committed are skipped)."""
        assert self.transactions is not None
        staged = prepared.staged
        encoded = staged.topic_records
        rows: dict[int, list[int]] = {}
        if encoded is not None:
            for i, msg in enumerate(prepared.batch.messages):
                rows.setdefault(msg.partition(), []).append(i)
        offsets: dict[int, list[TopicPartition]] = {}
        for tp in commit_offsets(prepared.messages):
            offsets.setdefault(tp.partition, []).append(tp)
        for p in sorted(offsets):
            if p in staged.committed:
                continue
            index = rows.get(p, [])
            keys = [encoded.keys[i] for i in index] if encoded is not None else []
            values = [encoded.values[i] for i in index] if encoded is not None else []
            stamps = [encoded.stamps[i] for i in index] if encoded is not None else []
            self.transactions.commit(p, keys, values, stamps, offsets[p],
                                     prepared.group_metadata,
                                     lambda: self.sinks.write_redis_once(staged))
            staged.committed.add(p)
        self.sinks.write_redis_once(staged)

    def _dead_letter(self, bad: Rejected) -> None:
        msg = bad.msg
        self.sinks.dead_letters.send(
            source_topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
            key=msg.key(), value=msg.value(), reason=bad.reason, error_type=bad.error_type,
        )


def score_isolating(handler: Handler, batch: Any, rejected: list[Rejected]
                    ) -> tuple[Any, np.ndarray]:
    """Scores for ``batch``. A failing batch is retried once, then split in halves until the
    records that make the model fail are isolated; those go to ``rejected`` (error type
    ``model``) and the rest of the batch is scored as usual."""
    if not len(batch):
        return batch, np.zeros(0, np.float32)
    try:
        return batch, handler.score(batch)
    except Exception:
        log.warning("model failed on a batch of %d; retrying once", len(batch))
    scored: dict[int, float] = {}
    _bisect(handler, batch, list(range(len(batch))), rejected, scored)
    kept = sorted(scored)
    return batch.take(kept), np.asarray([scored[i] for i in kept], np.float32)


def _bisect(handler: Handler, batch: Any, index: list[int], rejected: list[Rejected],
            scored: dict[int, float]) -> None:
    try:
        scores = handler.score(batch.take(index)).tolist()
    except Exception as exc:
        if len(index) == 1:
            msg = batch.messages[index[0]]
            log.warning("model failed on one record (to the dead-letter topic): %r", exc,
                        extra={"topic": msg.topic(), "partition": msg.partition(),
                               "offset": msg.offset(), "event_id": batch.event_ids[index[0]]})
            rejected.append(Rejected(msg, f"model error: {exc!r}", "model"))
            return
        half = len(index) // 2
        _bisect(handler, batch, index[:half], rejected, scored)
        _bisect(handler, batch, index[half:], rejected, scored)
        return
    scored.update(zip(index, scores, strict=True))
