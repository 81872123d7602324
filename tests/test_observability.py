"""streams.observability without Kafka or Redis: counters, histograms, /metrics, /healthz, /readyz.

Every test builds its own ``Observability`` (its own registry) and, when it needs HTTP, serves it
on a free port of 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaException, Message, TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError

from streaminfer.streams.batch import Rejected
from streaminfer.streams.metrics import PipelineMetrics
from streaminfer.streams.observability import (
    STALL_FILE_ENV,
    LaneMetrics,
    Observability,
    metric_names,
    sink_of,
)
from streaminfer.streams.settings import ConfigError, load_settings
from streaminfer.streams.writer import BatchWriter

pytestmark = pytest.mark.timeout(60)

APP = "classifier"


@pytest.fixture
def obs() -> Iterator[Observability]:
    o = Observability(APP, stall_after_s=0.5, pipeline=PipelineMetrics())
    yield o
    o.close()


def value(o: Observability, name: str, **labels: str) -> float | None:
    return o.registry.get_sample_value(name, {"app": APP, **labels})


def get(o: Observability, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{o.port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - start


def batch(lane: LaneMetrics, records: int = 10, rejects: list[Rejected] | None = None,
          latencies_ms: list[float] | None = None) -> None:
    rejects = rejects or []
    lane.batch_fetched(records)
    lat = np.asarray(latencies_ms if latencies_ms is not None
                     else [4.0] * (records - len(rejects)), float)
    lane.record_batch(records - len(rejects), len(rejects), lat, 100, records=records,
                      service_s=0.02, rejects=rejects)


class _Msg:
    """Enough of a confluent_kafka.Message for Rejected."""


# ---------------------------------------------------------------- counters and histograms


def test_counters_move_with_record_batch_and_snapshot_still_works(obs: Observability) -> None:
    lane = obs.lane(0)
    bad = [Rejected(_Msg(), "x", "decode"), Rejected(_Msg(), "y", "validation"),  # type: ignore[arg-type]
           Rejected(_Msg(), "z", "validation")]  # type: ignore[arg-type]
    batch(lane, 10, bad)
    batch(lane, 5)
    assert value(obs, "streaminfer_events_total", lane="0") == 15
    assert value(obs, "streaminfer_predictions_total", lane="0") == 12
    assert value(obs, "streaminfer_rejected_total", lane="0", reason="decode") == 1
    assert value(obs, "streaminfer_rejected_total", lane="0", reason="validation") == 2
    assert value(obs, "streaminfer_rejected_total", lane="0", reason="model") == 0
    assert value(obs, "streaminfer_dead_letters_total", lane="0") == 3
    snap = obs.pipeline.snapshot()  # type: ignore[union-attr]
    assert snap["events"] == 12 and snap["batches"] == 2 and snap["rejected"] == 3
    assert snap["p50_ms"] == 4.0
    progress = value(obs, "streaminfer_lane_last_progress_timestamp_seconds", lane="0")
    assert progress is not None and abs(progress - time.time()) < 5


def test_histograms_observe_once_per_batch_and_latency_in_bulk(obs: Observability) -> None:
    lane = obs.lane("a")
    # 5 ms sits exactly on a bucket bound: Prometheus buckets are "less or equal"
    batch(lane, 4, latencies_ms=[5.0, 5.0001, 120.0, 400_000.0])
    batch(lane, 2, latencies_ms=[1.0, 2.0])
    assert value(obs, "streaminfer_batch_size_count", lane="a") == 2
    assert value(obs, "streaminfer_batch_size_sum", lane="a") == 6
    assert value(obs, "streaminfer_batch_service_seconds_count", lane="a") == 2
    assert value(obs, "streaminfer_batch_service_seconds_sum", lane="a") == pytest.approx(0.04)
    lat = "streaminfer_event_latency_seconds"
    assert value(obs, f"{lat}_count", lane="a") == 6
    assert value(obs, f"{lat}_sum", lane="a") == pytest.approx(400.1330001)
    assert value(obs, f"{lat}_bucket", lane="a", le="0.005") == 3
    assert value(obs, f"{lat}_bucket", lane="a", le="0.01") == 4
    assert value(obs, f"{lat}_bucket", lane="a", le="0.25") == 5
    assert value(obs, f"{lat}_bucket", lane="a", le="300.0") == 5
    assert value(obs, f"{lat}_bucket", lane="a", le="+Inf") == 6


def test_registries_are_per_object() -> None:
    one, two = Observability(APP), Observability(APP)
    batch(one.lane(0), 3)
    assert one.registry.get_sample_value("streaminfer_events_total",
                                         {"app": APP, "lane": "0"}) == 3
    assert two.registry.get_sample_value("streaminfer_events_total",
                                         {"app": APP, "lane": "0"}) is None
    assert "streaminfer_event_latency_seconds_bucket" in metric_names(two.registry)


def test_model_learning_sync_and_checkpoint_metrics(obs: Observability) -> None:
    obs.set_model_version("v1+u42")
    assert value(obs, "streaminfer_model_version_info", version="v1") == 1
    assert value(obs, "streaminfer_model_updates") == 42
    obs.set_model_version("v1+u50")  # the same series: no new one per update
    assert value(obs, "streaminfer_model_updates") == 50
    obs.update_learning({"steps": 7, "auc": float("nan"), "learned": 3})
    assert value(obs, "streaminfer_progressive_rmse") is None  # never reported: no series
    obs.update_learning({"steps": 10, "auc": 0.75, "logloss": 0.5,
                         "sync": {"rounds_closed": 4, "round_s_total": 0.4,
                                  "staleness_ms_mean": 25.0}})
    assert value(obs, "streaminfer_learning_steps_total") == 10
    assert value(obs, "streaminfer_progressive_auc") == 0.75
    assert value(obs, "streaminfer_progressive_logloss") == 0.5
    assert value(obs, "streaminfer_sync_staleness_seconds") == 0.025
    assert value(obs, "streaminfer_sync_round_seconds_count") == 4
    assert value(obs, "streaminfer_sync_round_seconds_sum") == pytest.approx(0.4)
    obs.set_join_size(123)
    assert value(obs, "streaminfer_join_size") == 123
    obs.mark_checkpoint(time.time() - 100)
    age = value(obs, "streaminfer_checkpoint_age_seconds")
    assert age is not None and 99 < age < 110


def test_sink_of_names_the_failing_sink() -> None:
    assert sink_of(RedisConnectionError("down")) == "redis"
    assert sink_of(KafkaException("down")) == "kafka"
    assert sink_of(ValueError("?")) == "other"


def test_update_lag_reads_positions_and_cached_watermarks(obs: Observability) -> None:
    class Consumer:
        def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
            pos = {0: 90, 1: -1001}  # partition 1: nothing fetched yet, lag unknown
            return [TopicPartition(tp.topic, tp.partition, pos[tp.partition]) for tp in tps]

        def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False
                                  ) -> tuple[int, int]:
            assert cached, "the hot path must not wait on the broker"
            return 0, 100

    lane = obs.lane(0)
    lane.update_lag(Consumer(), {("events", 0), ("events", 1)})  # type: ignore[arg-type]
    assert value(obs, "streaminfer_consumer_lag", lane="0", topic="events", partition="0") == 10
    assert value(obs, "streaminfer_consumer_lag", lane="0", topic="events", partition="1") is None
    lane.set_lag({})  # partitions revoked: their series go
    assert value(obs, "streaminfer_consumer_lag", lane="0", topic="events", partition="0") is None


# ---------------------------------------------------------------- HTTP


def test_metrics_endpoint_serves_the_names(obs: Observability) -> None:
    batch(obs.lane(0), 3)
    port = obs.serve(0, "127.0.0.1")
    assert port and port == obs.port
    code, text = get(obs, "/metrics")
    assert code == 200
    for name in ("streaminfer_events_total", "streaminfer_event_latency_seconds_bucket",
                 "streaminfer_batch_size_bucket", "streaminfer_checkpoint_age_seconds"):
        assert name in text
    assert get(obs, "/nothing")[0] == 404


def test_serve_off_and_settings() -> None:
    o = Observability(APP)
    assert o.serve(-1) is None and o.port is None
    assert load_settings().metrics_port == 9464
    assert load_settings(metrics_port=-1).metrics_port == -1
    assert load_settings(stall_after_s=0.5).stall_after_s == 0.5
    with pytest.raises(ConfigError, match="metrics_port"):
        load_settings(metrics_port=-2)
    with pytest.raises(ConfigError, match="stall_after_s"):
        load_settings(stall_after_s=0)


def test_healthz_fails_when_a_lane_with_lag_stops_progressing(obs: Observability) -> None:
    lane = obs.lane(0)
    obs.serve(0, "127.0.0.1")
    assert get(obs, "/healthz")[0] == 200
    lane.set_lag({("events", 0): 500})
    batch(lane)  # progressing
    code, body = get(obs, "/healthz")
    assert code == 200 and json.loads(body)["lanes"]["0"]["state"] == "progressing"
    took = wait_for(lambda: get(obs, "/healthz")[0] == 503, timeout=2 * obs.stall_after_s + 0.5)
    assert took <= 2 * obs.stall_after_s
    body = json.loads(get(obs, "/healthz")[1])
    assert body["stalled"] == ["0"] and body["lanes"]["0"]["state"] == "stalled"
    assert value(obs, "streaminfer_lane_stalled", lane="0") == 1
    batch(lane)  # progress again
    assert get(obs, "/healthz")[0] == 200


def test_idle_lane_is_alive_and_the_stall_clock_starts_with_work(obs: Observability) -> None:
    lane = obs.lane(0)
    time.sleep(0.6)  # longer than stall_after_s without progress, but nothing to do
    assert obs.liveness()[0]
    lane.set_lag({("events", 0): 1})  # work appears now: not stalled at once
    assert obs.liveness()[0]
    wait_for(lambda: not obs.liveness()[0], timeout=1.5)


def test_healthz_stays_ok_while_the_lane_retries_a_sink(obs: Observability) -> None:
    lane = obs.lane(0)
    obs.serve(0, "127.0.0.1")
    lane.set_lag({("events", 0): 500})
    batch(lane)
    deadline = time.monotonic() + 3 * obs.stall_after_s
    while time.monotonic() < deadline:  # Redis down: the writer retries every 0.2 s
        lane.sink_retry(RedisConnectionError("Connection refused"), 0.2)
        code, body = get(obs, "/healthz")
        assert code == 200, body
        assert json.loads(body)["lanes"]["0"] == {**json.loads(body)["lanes"]["0"],
                                                  "state": "waiting on sink", "sink": "redis"}
        time.sleep(0.2)
    assert value(obs, "streaminfer_sink_retries_total", lane="0", sink="redis") >= 5  # type: ignore[operator]
    # the retries stop but no batch gets through (the writer is stuck): stalled
    wait_for(lambda: get(obs, "/healthz")[0] == 503, timeout=0.2 + 2 * obs.stall_after_s + 0.5)


def test_a_long_write_waits_on_the_sink_until_it_looks_hung() -> None:
    """Kafka's flush blocks up to 30 s before it fails: alive meanwhile; far longer: hung."""
    obs = Observability(APP, stall_after_s=0.3, sink_timeout_s=0.6)
    lane = obs.lane(0)
    lane.set_lag({("events", 0): 5})
    batch(lane)
    lane.sink_writing(True)
    time.sleep(0.5)  # past stall_after_s, within stall_after_s + sink_timeout_s
    ok, body = obs.liveness()
    assert ok and body["lanes"]["0"]["state"] == "waiting on sink", body
    wait_for(lambda: not obs.liveness()[0], timeout=1.5)
    lane.sink_writing(False)
    batch(lane)
    assert obs.liveness()[0]


def test_batch_writer_reports_retries_to_the_lane(obs: Observability) -> None:
    lane = obs.lane(0)
    attempts: list[int] = []

    def write(item: Any) -> None:
        attempts.append(item)
        if len(attempts) < 3:
            raise RedisConnectionError("down")
        batch(lane)

    writes: list[bool] = []

    def writing(active: bool) -> None:
        writes.append(active)
        lane.sink_writing(active)

    writer = BatchWriter(write, threading.Event(), retry_delay_s=0.01, on_retry=lane.sink_retry,
                         on_write=writing)
    writer.submit(1)
    writer.close()
    assert len(attempts) == 3
    assert writes == [True, False] * 3
    assert value(obs, "streaminfer_sink_retries_total", lane="0", sink="redis") == 2
    assert lane.health(time.monotonic(), obs.stall_after_s)["state"] == "idle"  # written


def test_stall_hook_blocks_the_loop_and_liveness_sees_it(obs: Observability) -> None:
    """A lane driven by a loop whose turns stop is stalled even if no lag was measured."""
    lane = obs.lane(0)
    stop = threading.Event()
    turns: list[float] = []

    def loop() -> None:
        while not stop.is_set():
            lane.before_batch(stop)
            turns.append(time.monotonic())
            time.sleep(0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(turns) > 3, timeout=2)
        assert obs.liveness()[0]
        lane.stall()
        wait_for(lambda: not obs.liveness()[0], timeout=2 * obs.stall_after_s + 0.5)
        count = len(turns)
        time.sleep(0.1)
        assert len(turns) == count  # blocked
        lane.resume()
        wait_for(lambda: obs.liveness()[0], timeout=2)
    finally:
        stop.set()
        thread.join(5)


def test_stall_file_env_var_blocks_before_the_batch(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    flag = tmp_path / "stall"
    monkeypatch.setenv(STALL_FILE_ENV, str(flag))
    lane = Observability(APP).lane(0)
    stop = threading.Event()
    flag.touch()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (lane.before_batch(stop), done.set()), daemon=True)
    thread.start()
    assert not done.wait(0.2)
    flag.unlink()
    assert done.wait(2)
    flag.touch()  # stop wins over the stall: shutdown is never blocked
    stop.set()
    lane.before_batch(stop)


def test_readyz_follows_set_ready(obs: Observability) -> None:
    obs.serve(0, "127.0.0.1")
    code, body = get(obs, "/readyz")
    assert code == 503
    assert len(json.loads(body)["waiting"]) == 3
    obs.mark_model_loaded("v1+u0")
    obs.set_ready(restored=True)
    assert get(obs, "/readyz")[0] == 503
    obs.set_ready(assigned=[0, 2])
    code, body = get(obs, "/readyz")
    assert code == 200 and json.loads(body)["partitions"] == [0, 2]
    assert value(obs, "streaminfer_ready") == 1
    obs.mark_rebalancing()
    assert get(obs, "/readyz")[0] == 503
    obs.mark_assigned([])  # more workers than partitions: a ready standby
    code, body = get(obs, "/readyz")
    assert code == 200 and "standby" in json.loads(body)["note"]
    obs.set_ready(model_loaded=False)
    assert get(obs, "/readyz")[0] == 503


# ---------------------------------------------------------------- the lane reports to it


def _kafka_msg(offset: int) -> Message:
    return Message(topic="events", partition=0, offset=offset, key=b"k", value=b"v")


def test_hot_path_reports_batches_lag_and_sink_retries(obs: Observability) -> None:
    """A real HotPath loop with fake Kafka, model and sinks: one batch of 3 records (one
    invalid), a Redis write that fails once, lag read from the consumer."""
    from types import SimpleNamespace

    from streaminfer.streams.batcher import AdaptiveLimit
    from streaminfer.streams.pipeline import HotPath

    messages = [_kafka_msg(o) for o in range(3)]
    batches = [messages]

    class Batcher:
        limit = AdaptiveLimit(100.0, 1000)

        def next_batch(self) -> list[Any]:
            time.sleep(0.01)
            return batches.pop() if batches else []

    class Batch:
        def __init__(self, rows: list[Any]) -> None:
            self.messages = rows
            self.ts = np.full(len(rows), time.time() * 1000 - 50.0)

        def __len__(self) -> int:
            return len(self.messages)

    class Handler:
        def decode(self, events: list[Any]) -> tuple[Batch, list[Rejected]]:
            return Batch(events[1:]), [Rejected(events[0], "bad", "validation")]

        def score(self, batch: Batch) -> np.ndarray:
            return np.zeros(len(batch), np.float32)

        def outputs(self, batch: Batch, scores: np.ndarray, now: int) -> Any:
            return SimpleNamespace(predictions=scores)

    failures = [RedisConnectionError("down")]
    dead: list[str] = []

    class Sinks:
        dead_letters = SimpleNamespace(send=lambda **kw: dead.append(kw["error_type"]),
                                       flush=lambda: None)

        def stage(self, outputs: Any) -> Any:
            return outputs

        def write(self, staged: Any) -> None:
            if failures:
                raise failures.pop()

    class Consumer:
        def commit(self, offsets: Any = None, asynchronous: bool = True) -> None:
            pass

        def close(self) -> None:
            pass

        def pause(self, tps: list[TopicPartition]) -> None:
            pass

        def resume(self, tps: list[TopicPartition]) -> None:
            pass

        def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
            return [TopicPartition(tp.topic, tp.partition, 3) for tp in tps]

        def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False
                                  ) -> tuple[int, int]:
            return 0, 10

    assignment = SimpleNamespace(owned={("events", 0)}, start=lambda *a: None,
                                 apply_pending=lambda *a, **k: None, stop=lambda: None)
    lane = obs.lane(0)
    hot = HotPath(Consumer(), assignment, Batcher(), Handler(), Sinks(), lane,  # type: ignore[arg-type]
                  retry_delay_s=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=hot.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: value(obs, "streaminfer_predictions_total", lane="0") == 2, timeout=10)
        wait_for(lambda: value(obs, "streaminfer_consumer_lag", lane="0", topic="events",
                               partition="0") == 7, timeout=5)
    finally:
        stop.set()
        thread.join(10)
    assert value(obs, "streaminfer_events_total", lane="0") == 3
    assert value(obs, "streaminfer_rejected_total", lane="0", reason="validation") == 1
    assert value(obs, "streaminfer_dead_letters_total", lane="0") == 1 and dead == ["validation"]
    assert value(obs, "streaminfer_sink_retries_total", lane="0", sink="redis") == 1
    assert value(obs, "streaminfer_batch_size_sum", lane="0") == 3
    assert value(obs, "streaminfer_batch_service_seconds_count", lane="0") == 1
    assert value(obs, "streaminfer_event_latency_seconds_count", lane="0") == 2
    assert obs.pipeline is not None and obs.pipeline.snapshot()["events"] == 2
    health = lane.health(time.monotonic(), obs.stall_after_s)
    assert health["in_flight"] == 0 and health["lag"] == 7
