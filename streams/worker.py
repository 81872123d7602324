"""The worker: one process of an app's consumer group, around the hot path.

Faust's worker owns group membership (group ``{consumer_group}-{app}``), through a small
*owners* topic with as many partitions as the input topic: the partitions of it that Faust
assigns to this worker are the input partitions this worker's hot-path lanes read (manual
assignment, see ``streams.assignment``), and Faust moves the join table's and the keyed
state's changelog partitions with them. Faust also runs the metrics timer and handles signals
and shutdown; the events themselves never pass through Faust's per-message dispatch (see
docs/design.md).

``Worker(app, settings)`` does no I/O; :meth:`Worker.start` creates topics, restores the
newest checkpoint and builds the Faust app; :meth:`Worker.run` runs it until stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import mode
import redis

from streaminfer.connectors.admin import check_credentials as check_kafka_credentials
from streaminfer.connectors.admin import ensure_topics, list_topics
from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.dead_letter import DeadLetterWriter
from streaminfer.connectors.kafka import make_consumer
from streaminfer.connectors.predictions_sink import PredictionsTopicSink
from streaminfer.connectors.redis_client import RedisClient
from streaminfer.connectors.redis_client import check_credentials as check_redis_credentials
from streaminfer.connectors.redis_client import connect as connect_redis
from streaminfer.connectors.redis_sink import RedisPredictionSink, RedisRecommendationSink
from streaminfer.connectors.transactions import PartitionTransactions
from streaminfer.errors import ConfigError
from streaminfer.models import checkpoint
from streaminfer.models.base import Model
from streaminfer.models.identity import IdentityModel
from streaminfer.models.quantize import Int8Serving
from streaminfer.streams.app import App
from streaminfer.streams.assignment import (
    Assignment,
    FollowedAssignment,
    GroupAssignment,
    PartitionState,
)
from streaminfer.streams.auto_guard import AutoGuard
from streaminfer.streams.batcher import AdaptiveLimit, Batcher
from streaminfer.streams.breaker import CircuitBreaker
from streaminfer.streams.candidates import Candidates
from streaminfer.streams.decode import RecordDecoder
from streaminfer.streams.guard import CachedPredictions, ModelGuard
from streaminfer.streams.handlers import AppHandler
from streaminfer.streams.join import JoinState
from streaminfer.streams.kafka_auth import faust_credentials
from streaminfer.streams.learner_setup import (
    Restored,
    build_hooks,
    checkpoint_store,
    restore,
    step_rule,
)
from streaminfer.streams.learning import FeedbackLearner, InlineLearner, Learner
from streaminfer.streams.logs import logging_config
from streaminfer.streams.metrics import LaneRecorder, PipelineMetrics
from streaminfer.streams.model_swap import ModelSwap, SwapTargets
from streaminfer.streams.observability import Observability
from streaminfer.streams.pipeline import HotPath, Sinks
from streaminfer.streams.search import LiveSearch
from streaminfer.streams.settings import Settings
from streaminfer.streams.table_store import FaustTableStore
from streaminfer.streams.user_state import UserState
from streaminfer.streams.wiring import create_kafka_sync, registry_from_settings

__all__ = ["Worker", "WorkerOptions", "build_guard", "build_handler", "build_hot_path",
           "build_lane"]

log = logging.getLogger(__name__)

_LANE_CONSUMER = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
                  "max.poll.interval.ms": 60_000}


#: The tables' changelogs are compacted; the broker compacts only closed segments and keeps
#: deletes a day by default, so a join changelog (every record soon deleted) would grow by its
#: write rate for a week (1 GiB segments). Ten-minute segments and tombstones bound it to
#: about twenty minutes of writes.
_CHANGELOG_CONFIG = {"cleanup.policy": "compact", "segment.ms": "600000",
                     "delete.retention.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}


@dataclass(frozen=True)
class WorkerOptions:
    """Per-process choices that are not deployment settings."""

    lanes: int = 1
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    model_path: Path | None = None
    identity_model: bool = False
    web_port: int | None = None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def build_handler(app: App, settings: Settings, model: Model) -> AppHandler:
    """Decode with the app's schema (JSON and any framing accepted), featurise, score."""
    codec = RecordCodec(app.input_schema(settings.schema_registry_url), "json",
                        registry_url=settings.schema_registry_url, topic=app.input.topic)
    decoder = RecordDecoder(codec, key=app.input.key, event_id=app.input.event_id,
                            event_time=app.input.event_time, fields=app.decode_fields,
                            max_record_bytes=settings.max_record_bytes, kafka_key_is_key=True)
    inline = app.learning if (settings.learn and app.learning is not None
                              and app.learning.topic is None) else None
    return AppHandler(model, decoder, app.features, app.outputs, inline_labels=inline)


def build_sinks(app: App, settings: Settings) -> Sinks:
    """A lane's own sinks: producers are not shared between threads."""
    client = connect_redis(settings.redis_url)
    topic = None
    if app.outputs.topic is not None:
        codec = RecordCodec(app.outputs.prediction_schema(app.name),
                            settings.effective_wire_format,
                            registry_url=settings.schema_registry_url, topic=app.outputs.topic)
        topic = PredictionsTopicSink(settings.kafka_config(), app.outputs.topic, codec.encode,
                                     encode_many=codec.encode_many,
                                     encode_columns=codec.encode_columns)
    return Sinks(
        redis=RedisPredictionSink(client, app.name, settings.redis_ttl_s,
                                  wait_replicas=settings.redis_wait_replicas),
        topic=topic,
        dead_letters=DeadLetterWriter(settings.kafka_config(), settings.dlq_topic),
        recommendations=RedisRecommendationSink(client, settings.redis_ttl_s,
                                                wait_replicas=settings.redis_wait_replicas)
        if app.outputs.top_n else None,
    )


def build_lane(app: App, settings: Settings, handler: AppHandler,
               metrics: PipelineMetrics | LaneRecorder, model_lock: threading.Lock,
               assignment: Assignment, group: str, learner: Learner | None = None) -> HotPath:
    consumer = make_consumer(settings.kafka_config(), group, **_LANE_CONSUMER)
    limit = AdaptiveLimit(settings.latency_target_ms, settings.batch_max_records)
    batcher = Batcher(consumer, limit, settings.batch_max_wait_ms / 1000, settings.batch_max_bytes)
    transactions = None
    if settings.processing_guarantee == "exactly-once":
        if app.outputs.topic is None:
            raise ConfigError("processing_guarantee=exactly-once needs a predictions topic "
                              "(the app's outputs.topic is None)")
        transactions = PartitionTransactions(settings.kafka_config(), group,
                                             app.outputs.topic)
    sinks = build_sinks(app, settings)
    if handler.candidates is not None:  # a shadow version's outputs, beside pred:{app}:{key}
        sinks.shadow = RedisPredictionSink(sinks.redis.client, app.name, settings.redis_ttl_s,
                                           kind="shadow")
        sinks.on_shadow_error = handler.candidates.shadow_write_failed
    return HotPath(consumer, assignment, batcher, handler, sinks, metrics,
                   model_lock=model_lock, learner=learner,
                   guard=build_guard(app, settings, handler, metrics),
                   transactions=transactions)


def build_guard(app: App, settings: Settings, handler: AppHandler,
                metrics: PipelineMetrics | LaneRecorder) -> ModelGuard:
    """A lane's circuit breaker around its forward pass, with the fallbacks it serves while
    open (``streams.guard``); its state and fallbacks go to ``metrics`` when it takes them."""
    breaker = CircuitBreaker(
        failure_rate=settings.breaker_failure_rate, window=settings.breaker_window,
        min_calls=settings.breaker_min_calls, open_for_s=settings.breaker_open_s,
        slow_call_s=settings.breaker_slow_call_s or None,
        timeout_s=settings.model_timeout_s or None, name=f"{app.name}-model")
    watch = getattr(metrics, "watch_breaker", None)
    if watch is not None:
        watch(breaker)
    unknown = set(settings.fallback_defaults) - set(app.outputs.names)
    if unknown:
        raise ConfigError(f"fallback_defaults names outputs the app does not declare: "
                          f"{sorted(unknown)} (outputs: {list(app.outputs.names)})")
    client = connect_redis(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    return ModelGuard(handler, breaker, names=app.outputs.names,
                      defaults=settings.fallback_defaults,
                      cached=CachedPredictions(client, app.name, app.outputs.names),
                      on_fallback=getattr(metrics, "fallback_served", None))


def build_hot_path(app: App, settings: Settings, handler: AppHandler, metrics: PipelineMetrics,
                   model_lock: threading.Lock) -> HotPath:
    """A standalone lane that joins the consumer group itself (benchmarks, simple uses)."""
    assignment = GroupAssignment([app.input.topic])
    return build_lane(app, settings, handler, metrics, model_lock, assignment,
                      f"{settings.consumer_group}-{app.name}")


class Worker:
    """One worker process of ``app``: ``Worker(app, settings).run()``.

    >>> from streaminfer.streams.settings import Settings
    >>> from streaminfer.streams.app import load_app
    >>> settings = Settings()
    >>> worker = Worker(load_app("classifier", settings), settings)   # no I/O yet
    >>> worker.group, worker.topics()[:2]
    ('streaminfer-classifier', ['events', 'predictions'])
    """

    def __init__(self, app: App, settings: Settings, options: WorkerOptions | None = None,
                 *, partitions: int = 4) -> None:
        self.app = app
        self.settings = settings
        self.options = options or WorkerOptions()
        self.partitions = partitions
        self.group = f"{settings.consumer_group}-{app.name}"
        # The lanes commit here (lag-based autoscalers watch it); the Faust group only joins.
        self.offsets_group = f"{self.group}-offsets"
        self.learning = app.learning if settings.learn else None
        self.label_topic = self.learning.topic if self.learning is not None else None
        self.lanes: list[HotPath] = []
        self.model: Model | None = None
        self.learner: Learner | None = None
        self.metrics = PipelineMetrics()
        self.obs = Observability.from_settings(settings, app=app.name, pipeline=self.metrics)
        self.model_lock = threading.Lock()
        self._owners = f"{self.group}-owners"
        self._settled: frozenset[int] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._redis: RedisClient | None = None
        self.swap: ModelSwap | None = None  # with a model registry: follows its labels

    # -- topics -----------------------------------------------------------------------------
    def changelogs(self) -> list[str]:
        """The compacted topics behind this worker's tables (Faust names them so)."""
        names = []
        if self.label_topic is not None:
            names.append(f"{self.group}-join-changelog")
        if self.learning is not None and self.app.state is not None:
            names.append(f"{self.group}-{self.app.state.name}-changelog")
        return names

    def topics(self) -> list[str]:
        """Every topic this worker reads or writes (internal ones last)."""
        names = [self.app.input.topic]
        if self.app.outputs.topic is not None:
            names.append(self.app.outputs.topic)
        names.append(self.settings.dlq_topic(self.app.input.topic))
        if self.label_topic is not None:
            names += [self.label_topic, self.settings.dlq_topic(self.label_topic)]
        return [*names, self._owners, *self.changelogs()]

    def ensure_topics(self) -> int:
        """Create what the worker uses with the input topic's partition count (``partitions``
        if it does not exist yet); returns that count."""
        config = self.settings.kafka_config()
        topic = self.app.input.topic
        existing = {t.name: t.partitions for t in list_topics(config)}
        n = existing.get(topic, self.partitions)
        compacted = set(self.changelogs())
        statuses = ensure_topics(config, dict.fromkeys(self.topics(), n),
                                 configs=dict.fromkeys(compacted, _CHANGELOG_CONFIG),
                                 **self.settings.topic_policy())
        labels = next((s for s in statuses if s.name == self.label_topic), None)
        if labels is not None and labels.partitions != n:
            raise ConfigError(
                f"{self.label_topic!r} has {labels.partitions} partitions but {topic!r} has "
                f"{n}: labels must be co-partitioned with their events (same partition count, "
                "same key) to join them")
        return n

    # -- model ------------------------------------------------------------------------------
    def fresh_model(self) -> Model:
        """The app's model as declared (or ``--model``'s checkpoint loaded into it)."""
        if self.options.identity_model:
            return IdentityModel()
        model = self.app.build_model(self.settings)
        if self.options.model_path is not None:
            checkpoint.load_into(model, self.options.model_path,
                                 max_bytes=self.settings.max_model_bytes)
        return model

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> faust.App:
        """Create topics, restore the newest checkpoint, build the lanes and the Faust app."""
        settings, app = self.settings, self.app
        check_kafka_credentials(settings.kafka_config())
        check_redis_credentials(settings.redis_url)
        n = self.ensure_topics()
        brokers = [f"kafka://{server}" for server in settings.bootstrap_servers.split(",")]
        datadir = Path(tempfile.gettempdir()) / "streaminfer-faust" / self.group
        datadir.parent.mkdir(parents=True, exist_ok=True)
        faust_app = faust.App(
            self.group, broker=brokers, store="memory://", topic_partitions=n,
            web_enabled=self.options.web_port is not None,
            web_port=self.options.web_port or 6066,
            # Faust declares the owners topic and the changelogs again (they exist by now):
            # same replication. Its leader topic is for on_leader timers, which we do not use.
            topic_replication_factor=settings.topic_replication_factor,
            topic_disable_leader=True, producer_acks=-1, broker_session_timeout=10.0,
            broker_heartbeat_interval=2.0, stream_recovery_delay=0.0,
            # Changelog writes come a batch of keys at a time: let them share requests
            # (Faust's defaults, no linger and 16 KB batches, cost a socket write per few).
            producer_linger=0.005, producer_max_batch_size=1_000_000,
            datadir=str(datadir),
            broker_credentials=faust_credentials(settings.kafka_config()),
        )
        owners = faust_app.topic(self._owners, partitions=n, value_serializer="raw")
        faust_app.agent(owners)(_own_partitions)

        port = self.obs.serve(settings.metrics_port)
        if port is not None:
            log.info("metrics, /healthz and /readyz on port %d", port)
        store = checkpoint_store(settings)
        fresh = self.fresh_model()
        # precedence: registry active label, --model, newest checkpoint of that same version
        swap = self.swap = self._model_swap()
        tag = swap.tag() if swap is not None and swap.initial(fresh) else None
        restored = restore(settings, app, store, fresh) if self.learning else Restored()
        model = self.model = restored.model or fresh
        self.obs.mark_model_loaded(model.version)
        handler = build_handler(app, settings, model)
        if settings.quantize == "int8":
            handler.int8 = Int8Serving(model, settings.quantize_refresh_s)
        topics = [app.input.topic]
        learner = self.learner = self._build_learner(faust_app, n, model, restored, store, tag)
        if swap is not None:
            swap.targets.handler, swap.targets.learner = handler, learner
            handler.candidates = swap.targets.candidates
            if learner is not None:
                learner.hooks.candidates = swap.targets.candidates
        if self.label_topic is not None:
            topics.append(self.label_topic)
        # A restored checkpoint's offsets: replay the tail it does not reflect (one worker's
        # own state; with parameter sync the shared state comes from the sync log instead).
        start_offsets = restored.start_offsets if settings.sync_mode == "off" else {}
        partition_state: PartitionState | None = None
        if isinstance(learner, FeedbackLearner):
            partition_state = learner.join
        elif isinstance(learner, InlineLearner):
            partition_state = learner.state
        for i in range(self.options.lanes):
            assignment = FollowedAssignment(topics, start_offsets=start_offsets)
            if partition_state is not None:
                assignment.carry(partition_state, self.model_lock)
            self.lanes.append(build_lane(app, settings, handler, self.obs.lane(i),
                                         self.model_lock, assignment, self.offsets_group,
                                         learner))

        faust_app.on_partitions_revoked.connect(self.on_partitions_revoked)
        faust_app.on_partitions_assigned.connect(self.on_partitions_assigned)
        faust_app.on_rebalance_complete.connect(self.on_rebalance_complete)
        faust_app.service(_LaneService(self))  # type: ignore[arg-type]
        faust_app.timer(1.0)(self.publish_metrics)
        self._redis = connect_redis(settings.redis_url)
        return faust_app

    def _model_swap(self) -> ModelSwap | None:
        """The registry watcher (``streams.model_swap``), if a registry is configured."""
        registry = registry_from_settings(self.settings)
        if registry is None or self.options.identity_model:
            return None
        settings = self.settings

        def switched(model: Model) -> None:
            self.model = model
            self.obs.mark_model_loaded(model.version)

        targets = SwapTargets(self.model_lock, handler=None, on_switch=switched,
                              quantize_refresh_s=settings.quantize_refresh_s
                              if settings.quantize == "int8" else None)
        kind = self.learning.metrics if self.learning is not None else None
        targets.candidates = Candidates(
            self.app.outputs.names, canary_share=settings.canary_share, metrics_kind=kind,
            served=self.learning.served if self.learning is not None else None)
        guard = None
        if settings.auto_guard and kind is not None:
            guard = AutoGuard(self.app.name, registry, kind,
                              min_labels=settings.auto_guard_min_labels,
                              margin=settings.auto_guard_margin,
                              max_error_rate=settings.auto_guard_max_error_rate,
                              obs_registry=self.obs.registry)
        search = None
        if kind is not None:
            search = LiveSearch(self.app.name, connect_redis(settings.redis_url), registry,
                                lambda point: self.app.build_model(
                                    settings.model_copy(update=point)),
                                self.options.worker_id, kind)
        return ModelSwap(self.app.name, registry, lambda: self.app.build_model(settings),
                         targets, outputs=len(self.app.outputs.names),
                         obs_registry=self.obs.registry, poll_s=settings.registry_poll_s,
                         metrics_kind=kind, auto_guard=guard, search=search)

    def _build_learner(self, faust_app: faust.App, n: int, model: Model, restored: Restored,
                       store: Any, tag: str | None = None) -> Learner | None:
        learning, settings = self.learning, self.settings
        if learning is None:
            return None
        sync = None
        if settings.sync_mode != "off":
            sync = create_kafka_sync(
                settings.sync_mode, model, kafka_config=settings.kafka_config(),
                topic=f"{self.group}-sync", worker_id=self.options.worker_id,
                every_updates=settings.sync_every_updates, every_ms=settings.sync_every_ms,
                round_timeout_ms=settings.sync_round_timeout_ms, shards=settings.sync_shards,
                start_position=restored.manifest.get("sync") or None, tag=tag,
                topic_policy=settings.topic_policy())
        hooks = build_hooks(settings, self.app, model, restored, self.options.worker_id,
                            self.written_offsets, sync, store, on_saved=self.obs.mark_checkpoint,
                            current=lambda: self.model or model)
        rule = step_rule(settings, learning)
        if learning.topic is not None:
            table = faust_app.Table("join", partitions=n, key_type=bytes, value_type=bytes)
            join = JoinState(FaustTableStore(table, faust_app),
                             int(settings.join_window_s * 1000), settings.join_max_entries)
            codec = RecordCodec(self.app.label_schema(settings.schema_registry_url), "json",
                                registry_url=settings.schema_registry_url, topic=learning.topic)
            labels = RecordDecoder(codec, key=learning.join_on, event_id=learning.join_on,
                                   event_time=learning.event_time,
                                   fields=[learning.label])
            return FeedbackLearner(model, hooks=hooks, feedback_topic=learning.topic, join=join,
                                   labels=labels, learning=learning, **rule)
        state = None
        if self.app.state is not None:
            table = faust_app.Table(self.app.state.name, partitions=n, key_type=bytes,
                                    value_type=bytes)
            state = UserState(FaustTableStore(table, faust_app), model,  # type: ignore[arg-type]
                              flush_s=self.app.state.flush_s)
        return InlineLearner(model, hooks=hooks, learning=learning, state=state, **rule)

    def run(self, loglevel: str = "info") -> None:
        """Start and run until SIGTERM/SIGINT; the current batch is finished and committed.
        Logs go to stderr as ``settings.log_format`` says, secrets masked (``streams.logs``)."""
        config = logging_config(self.settings.log_format, self.settings, app=self.app.name,
                                worker=self.options.worker_id)
        faust.Worker(self.start(), loglevel=loglevel, quiet=True,
                     logging_config=config).execute_from_commandline()

    def written_offsets(self) -> dict[tuple[str, int], int]:
        merged: dict[tuple[str, int], int] = {}
        for lane in self.lanes:
            merged.update(lane.written_offsets())
        return merged

    # -- membership -------------------------------------------------------------------------
    def _share(self, parts: Iterable[int], lane: int) -> frozenset[int]:
        return frozenset(p for p in parts if p % len(self.lanes) == lane)

    async def on_partitions_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        """Each lane commits what it wrote before its partitions move."""
        self._settled = None
        self.obs.mark_rebalancing()
        parts = {tp.partition for tp in revoked if tp.topic == self._owners}
        if not parts:
            return
        done = [lane.assignment.post("revoke", self._share(parts, i))  # type: ignore[attr-defined]
                for i, lane in enumerate(self.lanes)]
        loop = asyncio.get_running_loop()
        for event in done:
            await loop.run_in_executor(None, event.wait, 30.0)

    async def on_partitions_assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        """Record this rebalance's partitions; lanes take them once tables are recovered.

        Faust sends ``on_rebalance_complete`` from its table recovery, which can finish after
        the next rebalance has begun; the assignment read at that moment may be one this
        worker no longer holds. So lanes get the partitions recorded here, and the record is
        withdrawn as soon as the next rebalance revokes them.
        """
        self._settled = frozenset(tp.partition for tp in assigned if tp.topic == self._owners)

    async def on_rebalance_complete(self, sender: Any, **_: Any) -> None:
        if self._settled is None:
            log.info("table recovery finished during a new rebalance; lanes wait for it")
            return
        for i, lane in enumerate(self.lanes):
            lane.assignment.post("assign", self._share(self._settled, i))  # type: ignore[attr-defined]
        self.obs.mark_restored()  # Faust recovered the tables before this signal
        self.obs.mark_assigned(self._settled)

    # -- lanes ------------------------------------------------------------------------------
    def start_lanes(self) -> None:
        for i, lane in enumerate(self.lanes):
            thread = threading.Thread(target=self._run_lane, args=(lane,),
                                      name=f"hot-path-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.swap is not None:
            self.swap.start()
        assert self.model is not None
        log.info("streaminfer %s worker %s: %d lane(s) on %s, model %s %s", self.app.name,
                 self.options.worker_id, len(self.lanes), self.app.input.topic,
                 self.model.name, self.model.version)
        # passwords in these are masked by the log handler's filter (streams/logs.py)
        log.info("kafka %s, redis %s, schema registry %s", self.settings.bootstrap_servers,
                 self.settings.redis_url, self.settings.schema_registry_url or "none")

    def _run_lane(self, hot_path: HotPath) -> None:
        try:
            hot_path.run(self._stop)
        except Exception:
            log.exception("hot path lane crashed; stopping the worker")
            os.kill(os.getpid(), 15)

    def stop_lanes(self) -> None:
        if self.swap is not None:
            self.swap.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(30.0)
        self.obs.close()

    # -- metrics ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What the live view and the metrics key show: rates, latency, model, learning."""
        assert self.model is not None
        snap = {**self.metrics.snapshot(), "model_version": str(self.model.version),
                "worker": self.options.worker_id,
                "partitions": sorted({p for lane in self.lanes
                                      for _, p in lane.assignment.owned})}
        if self.learner is not None:
            with self.model_lock:
                snap["learning"] = self.learner.snapshot()
        if self.swap is not None:
            with self.model_lock:
                snap["lifecycle"] = self.swap.snapshot()
        return snap

    def update_prometheus(self, snap: dict[str, Any]) -> None:
        """Copy the once-a-second figures into the Prometheus gauges."""
        assert self.model is not None
        self.obs.set_model_version(self.model.version)
        learning = snap.get("learning")
        if learning:
            self.obs.update_learning(learning)
            if "join_size" in learning:
                self.obs.set_join_size(int(learning["join_size"]))
        versions = (snap.get("lifecycle") or {}).get("versions")
        if versions:
            self.obs.update_versions(versions)

    async def publish_metrics(self) -> None:
        """The JSON snapshot under ``metrics:{app}:{worker}`` (10 s expiry). A Redis outage
        is logged, never raised: a Faust timer that raises would crash the worker."""
        snap = self.snapshot()
        self.update_prometheus(snap)
        text = json.dumps(_finite(snap))  # strict JSON: NaN -> null
        key = f"metrics:{self.app.name}:{self.options.worker_id}"
        client = self._redis
        assert client is not None
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: client.set(key, text, ex=10))
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics not published to Redis (%s); will retry", exc)


class _LaneService(mode.Service):
    """Starts the lanes with the Faust worker; stops them (and commits) on shutdown."""

    def __init__(self, worker: Worker, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.worker = worker

    async def on_start(self) -> None:
        self.worker.start_lanes()

    async def on_stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop_lanes)


async def _own_partitions(stream: Any) -> None:
    """Never receives anything: subscribing makes Faust assign the owners' partitions."""
    async for _ in stream:
        pass
