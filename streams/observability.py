"""Prometheus metrics and the ``/healthz`` / ``/readyz`` checks of one worker process.

One ``Observability`` per worker: its own ``CollectorRegistry`` (so tests can build several),
one ``LaneMetrics`` per lane (what ``HotPath`` reports to, in place of ``PipelineMetrics``),
and one small HTTP server on ``--metrics-port`` (default 9464) that answers ``/metrics``,
``/healthz`` (liveness) and ``/readyz`` (readiness).

The hot path pays one call per batch: label children are bound once per lane, counters and
histograms get one update each, and the per-record latencies go into a histogram in bulk (one
``numpy.searchsorted`` per batch, see ``BulkHistogram``), never one ``observe`` per record.

How a worker uses it::

    obs = Observability.from_settings(settings, pipeline=pipeline_metrics)
    obs.serve(settings.metrics_port)           # -1: no server; 0: a free port (obs.port)
    obs.mark_model_loaded(model.version)       # after restore/load
    obs.mark_restored()                        # changelog tables recovered
    lanes = [HotPath(..., metrics=obs.lane(i), ...) for i in range(n)]
    # rebalance listener: obs.mark_rebalancing() on revoke, obs.mark_assigned(parts) on assign
    # (an empty assignment counts as ready: more workers than partitions, standing by)
    # once a second (the metrics timer): obs.update_learning(learner.snapshot()),
    #     obs.set_model_version(model.version), obs.set_join_size(join.size())
    # after each checkpoint: obs.mark_checkpoint()
    obs.close()                                # at shutdown

Liveness fails only for a lane that has work (consumer lag > 0, records fetched but not
written, or a loop that stopped turning) and made no progress for ``stall_after_s``. A lane
whose writer is retrying a sink (Redis or Kafka down), or is inside a write (Kafka's flush waits
up to 30 s before it fails), reports "waiting on sink" and stays alive: restarting the pod would
not bring Redis back. A single write attempt longer than ``stall_after_s + sink_timeout_s`` is a
hung connection, hence a stall: give the sinks' clients timeouts below ``sink_timeout_s``.
Test hook: while the file named by ``STREAMINFER_TEST_STALL_FILE`` exists, or between
``LaneMetrics.stall()`` and ``resume()``, the lane blocks before its next batch, as a stuck lane
would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streaminfer.errors import ConfigError
from streaminfer.streams.metrics import PipelineMetrics

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from streaminfer.streams.batch import Rejected
    from streaminfer.streams.settings import Settings

__all__ = [
    "STALL_FILE_ENV",
    "BulkHistogram",
    "LaneMetrics",
    "Observability",
    "metric_names",
    "sink_of",
]

log = logging.getLogger(__name__)

#: Names a file; while it exists every lane blocks before its next batch (liveness tests).
STALL_FILE_ENV = "STREAMINFER_TEST_STALL_FILE"

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     300.0)
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000)
SERVICE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0, 10.0)
SYNC_ROUND_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECT_REASONS = ("decode", "validation", "model")
SINKS = ("redis", "kafka", "other")
LAG_EVERY_S = 1.0


def sink_of(exc: BaseException) -> str:
    """Which sink a write error came from, by the exception's package (no imports needed)."""
    for cls in type(exc).__mro__:
        module = cls.__module__
        if module.startswith("redis"):
            return "redis"
        if module.startswith(("confluent_kafka", "cimpl")):
            return "kafka"
    return "other"


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can expose, children or not (for dashboard checks)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                 "_created"),
                "info": ("_info",), "summary": ("_sum", "_count", "_created")}
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


class _BulkChild:
    """One label set's buckets; ``observe_many`` costs one searchsorted per call."""

    def __init__(self, bounds: np.ndarray, scale: float) -> None:
        # bounds are stored in the caller's unit (e.g. ms) so values need no conversion
        self._bounds = bounds / scale
        self._scale = scale
        self._counts = np.zeros(len(bounds) + 1, np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        if not len(values):
            return
        index = np.searchsorted(self._bounds, values, side="left")  # le is inclusive
        counts = np.bincount(index, minlength=len(self._counts))
        total = float(values.sum()) * self._scale
        with self._lock:
            self._counts += counts
            self._sum += total

    def read(self) -> tuple[list[int], float]:
        with self._lock:
            return np.cumsum(self._counts).tolist(), self._sum


class BulkHistogram(Collector):
    """A Prometheus histogram fed whole arrays at a time (``Histogram`` takes one value per
    call: a thousand locked calls per batch). ``scale`` converts the values' unit to the
    exposed one, e.g. 1e-3 for milliseconds exposed as seconds."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry, scale: float = 1.0
                 ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets)
        self.scale = scale
        self._children: dict[tuple[str, ...], _BulkChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _BulkChild:
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _BulkChild(np.asarray(self.buckets), self.scale)
            return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        bounds = [*(floatToGoString(b) for b in self.buckets), "+Inf"]
        for key, child in children:
            cumulative, total = child.read()
            family.add_metric(list(key), list(zip(bounds, cumulative, strict=True)), total)
        yield family


class _Readiness:
    def __init__(self) -> None:
        self.assigned: frozenset[int] | None = None  # None: unknown / rebalancing
        self.restored = False
        self.model_loaded = False


class LaneMetrics:
    """What one lane reports to (a ``streams.metrics.LaneRecorder``), with its label children
    bound once. Also feeds the worker's shared ``PipelineMetrics`` (the Redis/demo view)."""

    def __init__(self, obs: Observability, name: str) -> None:
        self.obs = obs
        self.name = name
        self.pipeline = obs.pipeline
        app = obs.app
        self._events = obs.events.labels(app, name)
        self._predictions = obs.predictions.labels(app, name)
        self._rejected = {r: obs.rejected.labels(app, name, r) for r in REJECT_REASONS}
        self._dead_letters = obs.dead_letters.labels(app, name)
        self._batch_size = obs.batch_size.labels(app, name)
        self._service = obs.batch_service.labels(app, name)
        self._latency = obs.event_latency.labels(app, name)
        self._retries = {s: obs.sink_retries.labels(app, name, s) for s in SINKS}
        self._progress = obs.lane_progress.labels(app, name)
        self._paused = obs.lane_paused.labels(app, name)
        self._lag_children: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        now = time.monotonic()
        self._fetched = 0
        self._written = 0
        self._lag = 0
        self._last_progress = now
        self._work_since: float | None = None
        self._loop_turn: float | None = None  # None until a loop drives the lane
        self._retry_until: float | None = None
        self._retry_sink = ""
        self._writing_since: float | None = None
        self._next_lag = 0.0
        self._stalled = threading.Event()
        self._stall_file = os.environ.get(STALL_FILE_ENV) or None
        obs.lane_stalled.labels(app, name).set_function(
            lambda: float(self.health(time.monotonic(), obs.stall_after_s)["state"] == "stalled"))

    # ---- LaneRecorder: the hot path's calls

    def before_batch(self, stop: threading.Event) -> None:
        """Heartbeat of the lane's loop; blocks while a test stalls the lane."""
        while (self._stalled.is_set() or (self._stall_file is not None
                                          and os.path.exists(self._stall_file))):
            if stop.wait(0.05):
                return
        self._loop_turn = time.monotonic()

    def fallback_served(self, kind: str, rows: int) -> None:
        """``rows`` predictions of a batch came from fallback ``kind``."""
        self.obs.fallbacks.labels(self.obs.app, self.name, kind).inc(rows)

    def watch_breaker(self, breaker: Any) -> None:
        """Expose the lane's breaker state (read at scrape time)."""
        codes = {"closed": 0.0, "half-open": 1.0, "open": 2.0}
        self.obs.breaker_state.labels(self.obs.app, self.name).set_function(
            lambda: codes[breaker.state])

    def batch_fetched(self, records: int) -> None:
        self._events.inc(records)
        with self._lock:
            self._fetched += records
            self._note_work(time.monotonic())

    def record_batch(self, size: int, rejected: int, latencies_ms: np.ndarray, limit: int, *,
                     records: int | None = None, service_s: float | None = None,
                     rejects: Sequence[Rejected] = ()) -> None:
        if self.pipeline is not None:
            self.pipeline.record_batch(size, rejected, latencies_ms, limit)
        records = size + rejected if records is None else records
        self._predictions.inc(size)
        if rejects:
            reasons: dict[str, int] = {}
            for bad in rejects:
                reasons[bad.error_type] = reasons.get(bad.error_type, 0) + 1
            for reason, count in reasons.items():
                self._rejected.get(reason, self._rejected["model"]).inc(count)
        elif rejected:
            self._rejected["validation"].inc(rejected)
        if rejected:
            self._dead_letters.inc(rejected)
        self._batch_size.observe(records)
        if service_s is not None:
            self._service.observe(service_s)
        self._latency.observe_many(latencies_ms)
        self._progress.set(time.time())
        with self._lock:
            self._written += records
            self._last_progress = time.monotonic()
            self._retry_until = None

    def sink_writing(self, active: bool) -> None:
        """The writer is inside an attempt to write a batch (waiting on Redis/Kafka)."""
        with self._lock:
            self._writing_since = time.monotonic() if active else None

    def sink_retry(self, exc: BaseException, delay_s: float) -> None:
        """The writer failed a write and sleeps ``delay_s`` before the next attempt: alive."""
        sink = sink_of(exc)
        self._retries[sink].inc()
        with self._lock:
            self._retry_sink = sink
            self._retry_until = time.monotonic() + delay_s

    def sink_paused(self, paused: bool) -> None:
        """The lane paused its partitions while a sink is down (1), or resumed them (0)."""
        self._paused.set(1.0 if paused else 0.0)

    def update_lag(self, consumer: Consumer, owned: Set[tuple[str, int]]) -> None:
        """Lag = cached high watermark - position, per owned partition, at most once a second.
        No broker round trip: both come from the consumer's own fetch state. A partition with
        no position yet (nothing fetched since assignment) is left out rather than guessed."""
        now = time.monotonic()
        if now < self._next_lag:
            return
        self._next_lag = now + LAG_EVERY_S
        lags: dict[tuple[str, int], int] = {}
        try:
            if owned:
                positions = consumer.position([TopicPartition(t, p) for t, p in owned])
                for tp in positions:
                    if tp.offset < 0:
                        continue
                    marks = consumer.get_watermark_offsets(tp, cached=True)
                    if marks is not None and marks[1] >= 0:
                        lags[(tp.topic, tp.partition)] = max(0, marks[1] - tp.offset)
        except Exception as exc:  # lag is advisory: never fail the lane over it
            log.debug("lane %s: lag not measured: %s", self.name, exc)
            return
        self.set_lag(lags)

    # ---- for workers and tests

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """The lane's current lag per (topic, partition); partitions not listed are dropped."""
        gauge = self.obs.consumer_lag
        for tp in set(self._lag_children) - set(lags):
            self._lag_children.pop(tp)
            with contextlib.suppress(KeyError):  # already gone
                gauge.remove(self.obs.app, self.name, tp[0], str(tp[1]))
        for tp, lag in lags.items():
            child = self._lag_children.get(tp)
            if child is None:
                child = self._lag_children[tp] = gauge.labels(self.obs.app, self.name, tp[0],
                                                              str(tp[1]))
            child.set(lag)
        with self._lock:
            self._lag = sum(lags.values())
            self._note_work(time.monotonic())

    def stall(self) -> None:
        """Test hook: block the lane before its next batch until ``resume()``."""
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def health(self, now: float, stall_after_s: float) -> dict[str, Any]:
        """This lane's state: progressing, idle, waiting on sink, or stalled."""
        with self._lock:
            in_flight = max(0, self._fetched - self._written)
            loop_stuck = self._loop_turn is not None and now - self._loop_turn > stall_after_s
            has_work = self._lag > 0 or in_flight > 0 or loop_stuck
            since = now - max(self._last_progress, self._work_since or self._last_progress)
            out: dict[str, Any] = {"lag": self._lag, "in_flight": in_flight,
                                   "since_progress_s": round(now - self._last_progress, 3)}
            writing_s = None if self._writing_since is None else now - self._writing_since
            if self._retry_until is not None and now <= self._retry_until + stall_after_s:
                out.update(state="waiting on sink", sink=self._retry_sink)
            elif not has_work:
                out["state"] = "idle"
            elif since <= stall_after_s:
                out["state"] = "progressing"
            elif writing_s is not None and writing_s <= stall_after_s + self.obs.sink_timeout_s:
                out.update(state="waiting on sink", sink="write in progress")
            else:
                out["state"] = "stalled"
                if loop_stuck:
                    out["loop_turn_s_ago"] = round(now - (self._loop_turn or now), 3)
            if writing_s is not None:
                out["writing_s"] = round(writing_s, 3)
            return out

    def _note_work(self, now: float) -> None:
        """The stall clock starts when work appears: an idle lane was not stalled."""
        has_work = self._lag > 0 or self._fetched > self._written
        if has_work and self._work_since is None:
            self._work_since = now
        elif not has_work:
            self._work_since = None


class Observability:
    """A worker's Prometheus registry, lanes, readiness flags and HTTP server."""

    def __init__(self, app: str, *, stall_after_s: float = 30.0, sink_timeout_s: float = 60.0,
                 registry: CollectorRegistry | None = None,
                 pipeline: PipelineMetrics | None = None) -> None:
        self.app = app
        self.stall_after_s = stall_after_s
        self.sink_timeout_s = sink_timeout_s
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.pipeline = pipeline
        self.started = time.time()
        self.lanes: dict[str, LaneMetrics] = {}
        self._ready = _Readiness()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._last_steps: int | None = None
        self._last_rounds: tuple[int, float] | None = None
        self._last_checkpoint: float | None = None
        self._version_series: set[tuple[str, ...]] = set()
        r = self.registry
        lane = ("app", "lane")
        self.events = Counter("streaminfer_events_total", "Records read from the input topics",
                              lane, registry=r)
        self.predictions = Counter("streaminfer_predictions_total",
                                   "Predictions written to the sinks", lane, registry=r)
        self.rejected = Counter("streaminfer_rejected_total",
                                "Records rejected, by reason (decode, validation, model)",
                                (*lane, "reason"), registry=r)
        self.dead_letters = Counter("streaminfer_dead_letters_total",
                                    "Records sent to the dead-letter topic", lane, registry=r)
        self.batch_size = Histogram("streaminfer_batch_size", "Records per micro-batch", lane,
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_service = Histogram("streaminfer_batch_service_seconds",
                                       "Time to prepare and write one batch (not its queueing)",
                                       lane, buckets=SERVICE_BUCKETS_S, registry=r)
        self.event_latency = BulkHistogram("streaminfer_event_latency_seconds",
                                           "Event time to Redis write, per record", lane,
                                           LATENCY_BUCKETS_S, r, scale=1e-3)
        self.consumer_lag = Gauge("streaminfer_consumer_lag",
                                  "Records behind the high watermark, per input partition",
                                  (*lane, "topic", "partition"), registry=r)
        self.sink_retries = Counter("streaminfer_sink_retries_total",
                                    "Failed sink writes that will be retried", (*lane, "sink"),
                                    registry=r)
        self.lane_progress = Gauge("streaminfer_lane_last_progress_timestamp_seconds",
                                   "When the lane last wrote a batch (Unix time)", lane,
                                   registry=r)
        self.lane_paused = Gauge("streaminfer_lane_paused",
                                 "1 while the lane's partitions are paused because a sink "
                                 "refuses writes", lane, registry=r)
        self.fallbacks = Counter("streaminfer_fallbacks_total",
                                 "Predictions served by a fallback while the model could not "
                                 "serve (kind: previous, cached, default)", (*lane, "kind"),
                                 registry=r)
        self.breaker_state = Gauge("streaminfer_breaker_state",
                                   "The model's circuit breaker: 0 closed, 1 half-open, 2 open",
                                   lane, registry=r)
        self.lane_stalled = Gauge("streaminfer_lane_stalled",
                                  "1 while the lane has work but made no progress", lane,
                                  registry=r)
        self.model_version = Info("streaminfer_model_version",
                                  "Serving model's base version (see streaminfer_model_updates)",
                                  ("app",), registry=r)
        self.model_updates = Gauge("streaminfer_model_updates",
                                   "Online updates applied to the serving model", ("app",),
                                   registry=r)
        self.learning_steps = Counter("streaminfer_learning_steps_total", "Optimiser steps",
                                      ("app",), registry=r)
        self.join_size = Gauge("streaminfer_join_size",
                               "Entries the feedback join holds (events + waiting labels)",
                               ("app",), registry=r)
        # children appear with their first value: no misleading 0 AUC before any feedback,
        # no RMSE series for the classifier
        self.progressive = {
            key: Gauge(f"streaminfer_progressive_{key}",
                       f"Progressive (test-then-train) {key} of served scores", ("app",),
                       registry=r)
            for key in ("auc", "logloss", "accuracy", "rmse", "mae")
        }
        # per version (streams.candidates): role is active, shadow or canary
        self.version_metric = Gauge(
            "streaminfer_version_progressive",
            "Progressive (test-then-train) metric of each version over the same labels",
            ("app", "role", "version", "metric"), registry=r)
        self.candidate_rows = Gauge(
            "streaminfer_candidate_rows", "Rows a shadow or canary version scored since it "
            "was loaded", ("app", "role", "version"), registry=r)
        self.candidate_errors = Gauge(
            "streaminfer_candidate_errors", "A shadow or canary version's failed calls and "
            "non-finite outputs since it was loaded (the active version served instead)",
            ("app", "role", "version"), registry=r)
        self.sync_staleness = Gauge("streaminfer_sync_staleness_seconds",
                                    "Age of peers' parameter updates when applied (mean)",
                                    ("app",), registry=r)
        self.sync_round = Histogram("streaminfer_sync_round_seconds",
                                    "Duration of synchronous parameter-sync rounds", ("app",),
                                    buckets=SYNC_ROUND_BUCKETS_S, registry=r)
        self.checkpoint_age = Gauge("streaminfer_checkpoint_age_seconds",
                                    "Seconds since the last checkpoint (since start if none)",
                                    ("app",), registry=r)
        self.checkpoint_age.labels(app).set_function(self._checkpoint_age)
        self.ready_gauge = Gauge("streaminfer_ready", "1 when /readyz answers 200", ("app",),
                                 registry=r)
        self.ready_gauge.labels(app).set_function(lambda: float(self.readiness()[0]))

    @classmethod
    def from_settings(cls, settings: Settings, *, app: str | None = None,
                      registry: CollectorRegistry | None = None,
                      pipeline: PipelineMetrics | None = None) -> Observability:
        """``app``: the app's name (label of every metric) [default: the settings' app]."""
        return cls(app or settings.app, stall_after_s=settings.stall_after_s,
                   registry=registry, pipeline=pipeline)

    def lane(self, name: str | int) -> LaneMetrics:
        """The recorder for lane ``name`` (created once; hand it to that lane's HotPath)."""
        key = str(name)
        if key not in self.lanes:
            self.lanes[key] = LaneMetrics(self, key)
        return self.lanes[key]

    # ---- model and learning (from the worker's once-a-second timer)

    def set_model_version(self, version: object) -> None:
        """``v1+u<updates>``: the base goes to the info metric (one series per base version,
        not one per update), the update count to ``streaminfer_model_updates``."""
        text = str(version)
        base, _, updates = text.partition("+u")
        self.model_version.labels(self.app).info({"version": base})
        if updates.isdigit():
            self.model_updates.labels(self.app).set(int(updates))

    def update_learning(self, snapshot: Mapping[str, Any]) -> None:
        """Map ``Learner.snapshot()`` (steps, progressive metrics, sync stats) to metrics."""
        steps = snapshot.get("steps")
        if isinstance(steps, int):
            if self._last_steps is not None and steps > self._last_steps:
                self.learning_steps.labels(self.app).inc(steps - self._last_steps)
            elif self._last_steps is None and steps > 0:
                self.learning_steps.labels(self.app).inc(steps)
            self._last_steps = steps
        for key, gauge in self.progressive.items():
            value = snapshot.get(key)
            if isinstance(value, int | float):
                gauge.labels(self.app).set(float(value))
        sync = snapshot.get("sync")
        if isinstance(sync, Mapping):
            stale = sync.get("staleness_ms_mean")
            if isinstance(stale, int | float):
                self.sync_staleness.labels(self.app).set(stale / 1000)
            closed, total = sync.get("rounds_closed"), sync.get("round_s_total")
            if isinstance(closed, int) and isinstance(total, int | float):
                last = self._last_rounds or (0, 0.0)
                new = closed - last[0]
                if new > 0:  # the rounds since the last call, each at their mean duration
                    for _ in range(min(new, 1000)):
                        self.observe_sync_round((total - last[1]) / new)
                self._last_rounds = (closed, float(total))

    def update_versions(self, versions: Mapping[str, Mapping[str, Any]]) -> None:
        """Map ``Candidates.snapshot()`` (``"shadow v2" -> figures``) to the per-version
        gauges."""
        series: set[tuple[str, ...]] = set()
        for name, figures in versions.items():
            role, _, version = name.partition(" ")
            for key in ("count", *self.progressive):
                value = figures.get(key)
                if isinstance(value, int | float):
                    self.version_metric.labels(self.app, role, version, key).set(float(value))
                    series.add((role, version, key))
            if "rows" in figures:
                self.candidate_rows.labels(self.app, role, version).set(figures["rows"])
                self.candidate_errors.labels(self.app, role, version).set(figures["errors"])
                series.add((role, version))
        for gone in self._version_series - series:  # a candidate dropped: no stale series
            if len(gone) == 3:
                self.version_metric.remove(self.app, *gone)
            else:
                self.candidate_rows.remove(self.app, *gone)
                self.candidate_errors.remove(self.app, *gone)
        self._version_series = series

    def observe_sync_round(self, seconds: float) -> None:
        self.sync_round.labels(self.app).observe(seconds)

    def set_sync_staleness(self, seconds: float) -> None:
        self.sync_staleness.labels(self.app).set(seconds)

    def set_join_size(self, size: int) -> None:
        self.join_size.labels(self.app).set(size)

    def mark_checkpoint(self, at: float | None = None) -> None:
        """A checkpoint was written at ``at`` (Unix time; now by default)."""
        self._last_checkpoint = time.time() if at is None else at

    def _checkpoint_age(self) -> float:
        return time.time() - (self._last_checkpoint or self.started)

    # ---- readiness

    def mark_assigned(self, partitions: Iterable[int]) -> None:
        """The rebalance settled with ``partitions`` for this worker; an empty set is ready
        too (more workers than partitions: a standby must not block rolling updates)."""
        self._ready.assigned = frozenset(partitions)

    def mark_rebalancing(self) -> None:
        self._ready.assigned = None

    def mark_restored(self, restored: bool = True) -> None:
        self._ready.restored = restored

    def mark_model_loaded(self, version: object | None = None) -> None:
        self._ready.model_loaded = True
        if version is not None:
            self.set_model_version(version)

    def set_ready(self, *, assigned: Iterable[int] | None = None, restored: bool | None = None,
                  model_loaded: bool | None = None) -> None:
        """Several readiness facts at once; ``None`` leaves a fact as it is."""
        if assigned is not None:
            self.mark_assigned(assigned)
        if restored is not None:
            self._ready.restored = restored
        if model_loaded is not None:
            self._ready.model_loaded = model_loaded

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        r = self._ready
        waiting = [why for why, ok in (("partitions not assigned (rebalancing)",
                                        r.assigned is not None),
                                       ("state not restored", r.restored),
                                       ("model not loaded", r.model_loaded)) if not ok]
        body: dict[str, Any] = {"status": "not ready" if waiting else "ready"}
        if waiting:
            body["waiting"] = waiting
        if r.assigned is not None:
            body["partitions"] = sorted(r.assigned)
            if not r.assigned:
                body["note"] = "no partitions assigned (more workers than partitions): standby"
        return not waiting, body

    # ---- liveness

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        lanes = {name: lane.health(now, self.stall_after_s) for name, lane in self.lanes.items()}
        stalled = sorted(name for name, h in lanes.items() if h["state"] == "stalled")
        body = {"status": "stalled" if stalled else "ok", "stall_after_s": self.stall_after_s,
                "lanes": lanes}
        if stalled:
            body["stalled"] = stalled
        return not stalled, body

    # ---- HTTP

    def serve(self, port: int | None = 9464, host: str = "0.0.0.0") -> int | None:
        """Start ``/metrics``, ``/healthz``, ``/readyz`` on a daemon thread; returns the bound
        port (``port=0`` picks a free one). ``None`` or a negative port: no server."""
        if port is None or port < 0:
            return None
        if self._server is not None:
            raise RuntimeError(f"already serving on port {self.port}")
        try:
            self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        except OSError as exc:
            raise ConfigError(f"metrics_port {port}: cannot listen ({exc.strerror}); another "
                              "worker on this host? give each its own port, 0 for any free "
                              "one, or -1 for none") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="observability-http", daemon=True)
        self._thread.start()
        log.info("metrics and health on http://%s:%d/{metrics,healthz,readyz}", host, self.port)
        return self.port

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _handler_for(obs: Observability) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(obs.registry))
            elif path in ("/healthz", "/readyz"):
                ok, body = obs.liveness() if path == "/healthz" else obs.readiness()
                self._send(200 if ok else 503, "application/json",
                           json.dumps(_finite(body)).encode())
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /healthz, /readyz\n")

        def _send(self, code: int, content_type: str, payload: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
