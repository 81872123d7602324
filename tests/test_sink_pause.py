"""A lane whose sinks refuse writes pauses its partitions, commits nothing, and resumes by
itself (a real HotPath loop and BatchWriter; Kafka, model and sinks are fakes that record)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
from confluent_kafka import Message, TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError
from workers import wait_for

from streaminfer.streams.batch import Rejected
from streaminfer.streams.batcher import AdaptiveLimit
from streaminfer.streams.metrics import PipelineMetrics
from streaminfer.streams.pipeline import HotPath
from streaminfer.streams.writer import BatchWriter


def _msg(offset: int) -> Message:
    return Message(topic="events", partition=0, offset=offset, value=b"v")


class _Batch:
    def __init__(self, rows: list[Any]) -> None:
        self.messages = rows
        self.ts = np.full(len(rows), time.time() * 1000.0)

    def __len__(self) -> int:
        return len(self.messages)


class _Handler:
    def decode(self, events: list[Any]) -> tuple[_Batch, list[Rejected]]:
        return _Batch(events), []

    def score(self, batch: _Batch) -> np.ndarray:
        return np.zeros(len(batch), np.float32)

    def outputs(self, batch: _Batch, scores: np.ndarray, now: int) -> Any:
        return SimpleNamespace(predictions=[m.offset() for m in batch.messages])


class _Recorder(PipelineMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[bool] = []
        self.retries: list[float] = []

    def sink_paused(self, paused: bool) -> None:
        self.pauses.append(paused)

    def sink_retry(self, exc: BaseException, delay_s: float) -> None:
        self.retries.append(delay_s)


def test_a_lane_pauses_while_redis_is_down_and_resumes_by_itself() -> None:
    down = threading.Event()
    down.set()
    log: list[tuple[str, Any]] = []  # what the consumer was asked, in order
    fetched: list[int] = []
    written: list[int] = []
    next_offset = [0]

    class Batcher:
        limit = AdaptiveLimit(100.0, 1000)

        def next_batch(self) -> list[Any]:
            time.sleep(0.005)
            if log and log[-1][0] == "pause":
                raise AssertionError("fetched from a paused consumer")
            batch = [_msg(next_offset[0] + i) for i in range(10)]
            next_offset[0] += 10
            fetched.append(len(batch))
            return batch

    class Sinks:
        dead_letters = SimpleNamespace(send=lambda **kw: None, flush=lambda: None)

        def stage(self, outputs: Any) -> Any:
            return outputs

        def write(self, staged: Any) -> None:
            if down.is_set():
                raise RedisConnectionError("Connection refused")
            written.extend(staged.predictions)

    class Consumer:
        def commit(self, offsets: Any = None, asynchronous: bool = True) -> None:
            log.append(("commit", max(tp.offset for tp in offsets)))

        def pause(self, tps: list[TopicPartition]) -> None:
            log.append(("pause", [(tp.topic, tp.partition) for tp in tps]))

        def resume(self, tps: list[TopicPartition]) -> None:
            log.append(("resume", [(tp.topic, tp.partition) for tp in tps]))

        def close(self) -> None:
            pass

    assignment = SimpleNamespace(owned={("events", 0)}, start=lambda *a: None,
                                 apply_pending=lambda *a, **k: None, stop=lambda: None)
    metrics = _Recorder()
    hot = HotPath(Consumer(), assignment, Batcher(), _Handler(), Sinks(), metrics,  # type: ignore[arg-type]
                  retry_delay_s=0.02)
    stop = threading.Event()
    thread = threading.Thread(target=hot.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: ("pause", [("events", 0)]) in log, 10, "the lane to pause")
        paused_at = len(fetched)
        time.sleep(0.5)  # an outage: retries go on, the lane takes nothing new
        assert len(fetched) == paused_at <= 3  # the batch retried, one queued, one held
        assert not [e for e in log if e[0] == "commit"]
        assert len(metrics.retries) >= 3 and metrics.pauses == [True]
        down.clear()
        wait_for(lambda: any(e[0] == "resume" for e in log), 10, "the lane to resume")
        wait_for(lambda: len(written) >= (paused_at + 2) * 10, 10, "batches after the outage")
    finally:
        stop.set()
        thread.join(10)
    assert metrics.pauses == [True, False]
    assert written == list(range(len(written)))  # in order, nothing skipped, nothing lost
    commits = [o for kind, o in log if kind == "commit"]
    assert commits == sorted(commits) and commits[-1] == len(written)


def test_retries_back_off_with_jitter() -> None:
    waits: list[float] = []
    attempts = [0]

    def write(item: Any) -> None:
        attempts[0] += 1
        if attempts[0] <= 6:
            raise RedisConnectionError("down")

    writer = BatchWriter(write, threading.Event(), retry_delay_s=0.01, max_delay_s=0.08,
                         on_retry=lambda exc, wait: waits.append(wait))
    writer.submit(1)
    assert writer.failing.wait(5)
    writer.close()
    assert not writer.failing.is_set()
    caps = [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps, strict=True)), waits
    assert len(set(waits)) == len(waits)  # drawn, not fixed
