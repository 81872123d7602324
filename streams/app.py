"""The Faust application around the hot path: membership, tables, lifecycle, metrics.

Faust's worker owns group membership (group ``{consumer_group}-{app}``), through a small
*owners* topic with as many partitions as the input topic: the partitions of it that Faust
assigns to this worker are the input partitions this worker's hot-path lanes read (manual
assignment, see ``streams.assignment``), and Faust moves the join table's changelog partitions
with them. Faust also runs the metrics timer and handles signals and shutdown; the events
themselves never pass through Faust's per-message dispatch (see docs/design.md).
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
from streaminfer.connectors.admin import ensure_topics as ensure_topics_on_broker
from streaminfer.connectors.admin import list_topics
from streaminfer.connectors.avro import make_codec
from streaminfer.connectors.dead_letter import DeadLetterWriter
from streaminfer.connectors.kafka import make_consumer
from streaminfer.connectors.predictions_sink import PredictionsTopicSink
from streaminfer.connectors.redis_sink import RedisPredictionSink, RedisRecommendationSink
from streaminfer.models import checkpoint
from streaminfer.models.base import Model
from streaminfer.models.factory import create_model
from streaminfer.models.recommender import MatrixFactorization
from streaminfer.streams.assignment import (
    Assignment,
    FollowedAssignment,
    GroupAssignment,
    PartitionState,
)
from streaminfer.streams.batcher import AdaptiveLimit, Batcher
from streaminfer.streams.handlers import ClassifierHandler, Handler, RecommenderHandler
from streaminfer.streams.join import JoinState
from streaminfer.streams.learner_setup import Restored, build_hooks, checkpoint_store, restore
from streaminfer.streams.learning import FeedbackLearner, Learner, RatingLearner
from streaminfer.streams.metrics import PipelineMetrics
from streaminfer.streams.pipeline import HotPath, Sinks
from streaminfer.streams.settings import Settings
from streaminfer.streams.table_store import FaustTableStore
from streaminfer.streams.user_state import UserState
from streaminfer.streams.wiring import create_kafka_sync

from streaminfer.errors import ConfigError

__all__ = ["WorkerOptions", "build_app", "build_hot_path", "load_or_create_model"]

log = logging.getLogger(__name__)

_LANE_CONSUMER = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
                  "max.poll.interval.ms": 60_000}


@dataclass(frozen=True)
class WorkerOptions:
    """Per-process choices that are not deployment settings."""

    lanes: int = 1
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    model_path: Path | None = None
    identity_model: bool = False
    top_n: int = 10
    web_port: int | None = None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def input_topic(settings: Settings) -> str:
    return settings.events_topic if settings.app == "classifier" else settings.ratings_topic


def group_id(settings: Settings) -> str:
    return f"{settings.consumer_group}-{settings.app}"


def learns_from_feedback(settings: Settings) -> bool:
    return settings.learn and settings.app == "classifier"


def load_or_create_model(settings: Settings, options: WorkerOptions) -> Model:
    """A model from ``--model`` (safetensors checkpoint) or a fresh seeded one."""
    if options.model_path is not None:
        model, _manifest = checkpoint.load(options.model_path, device=settings.device)
        if model.name != settings.app:
            raise ConfigError(f"{options.model_path} holds a {model.name!r} model, "
                              f"but the app is {settings.app!r}")
        return model
    app = "identity" if options.identity_model else settings.app
    return create_model(app, num_features=settings.num_features, seed=settings.seed,
                        device=settings.device, amp=settings.amp, lr=settings.lr,
                        optimizer=settings.optimizer, l2=settings.l2,
                        **({"hidden": settings.hidden} if app == "classifier" else {}))


def build_handler(settings: Settings, model: Model, options: WorkerOptions) -> Handler:
    codec = make_codec("rating" if settings.app == "recommender" else "event", "json",
                       settings.schema_registry_url, input_topic(settings))
    if settings.app == "recommender" and isinstance(model, MatrixFactorization):
        return RecommenderHandler(model, codec, top_n=options.top_n)
    return ClassifierHandler(model, codec, settings.num_features)


def build_sinks(settings: Settings) -> Sinks:
    """A lane's own sinks: producers are not shared between threads."""
    out_codec = make_codec("prediction", settings.effective_wire_format,
                           settings.schema_registry_url, settings.predictions_topic)
    client = redis.Redis.from_url(settings.redis_url)
    return Sinks(
        redis=RedisPredictionSink(client, settings.app, settings.redis_ttl_s),
        topic=PredictionsTopicSink(settings.kafka_config(), settings.predictions_topic,
                                   out_codec.encode, encode_many=out_codec.encode_many,
                                   encode_columns=out_codec.encode_columns),
        dead_letters=DeadLetterWriter(settings.kafka_config(), settings.dlq_topic),
        recommendations=RedisRecommendationSink(client, settings.redis_ttl_s)
        if settings.app == "recommender" else None,
    )


def build_lane(settings: Settings, handler: Handler, metrics: PipelineMetrics,
               model_lock: threading.Lock, assignment: Assignment, group: str,
               learner: Learner | None = None) -> HotPath:
    consumer = make_consumer(settings.kafka_config(), group, **_LANE_CONSUMER)
    limit = AdaptiveLimit(settings.latency_target_ms, settings.batch_max_records)
    batcher = Batcher(consumer, limit, settings.batch_max_wait_ms / 1000, settings.batch_max_bytes)
    return HotPath(consumer, assignment, batcher, handler, build_sinks(settings), metrics,
                   model_lock=model_lock, learner=learner)


def build_hot_path(settings: Settings, handler: Handler, metrics: PipelineMetrics,
                   model_lock: threading.Lock) -> HotPath:
    """A standalone lane that joins the consumer group itself (benchmarks, simple uses)."""
    assignment = GroupAssignment([input_topic(settings)])
    return build_lane(settings, handler, metrics, model_lock, assignment, group_id(settings))


def ensure_topics(settings: Settings, partitions: int, *compacted: str) -> int:
    """Create what the worker reads and writes, with the input topic's partition count
    (``partitions`` if it does not exist yet); returns that count."""
    config = settings.kafka_config()
    topic = input_topic(settings)
    existing = {t.name: t.partitions for t in list_topics(config)}
    partitions = existing.get(topic, partitions)
    wanted = [topic, settings.predictions_topic, settings.dlq_topic(topic), *compacted]
    if learns_from_feedback(settings):
        wanted += [settings.feedback_topic, settings.dlq_topic(settings.feedback_topic)]
    statuses = ensure_topics_on_broker(
        config, dict.fromkeys(wanted, partitions),
        configs={name: {"cleanup.policy": "compact"} for name in compacted})
    feedback = next((s for s in statuses if s.name == settings.feedback_topic), None)
    if feedback is not None and feedback.partitions != partitions:
        raise ConfigError(
            f"{settings.feedback_topic!r} has {feedback.partitions} partitions but {topic!r} has "
            f"{partitions}: feedback must be co-partitioned with its events (same partition "
            "count, same key) to join them")
    return partitions


def build_app(settings: Settings, options: WorkerOptions, partitions: int = 4) -> faust.App:
    """A Faust app whose worker runs ``options.lanes`` hot-path threads."""
    app_id = group_id(settings)
    owners_name = f"{app_id}-owners"
    changelogs = [f"{app_id}-join-changelog" if settings.app == "classifier"
                  else f"{app_id}-users-changelog"]
    n = ensure_topics(settings, partitions, owners_name, *changelogs)
    brokers = [f"kafka://{server}" for server in settings.bootstrap_servers.split(",")]
    datadir = Path(tempfile.gettempdir()) / "streaminfer-faust" / app_id  # memory store: unused
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id, broker=brokers, store="memory://", topic_partitions=n,
        web_enabled=options.web_port is not None, web_port=options.web_port or 6066,
        topic_replication_factor=1, producer_acks=-1, broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0, stream_recovery_delay=0.0,
        # Changelog writes come a batch of users at a time: let them share requests (Faust's
        # defaults, no linger and 16 KB batches, cost a socket write per few records).
        producer_linger=0.005, producer_max_batch_size=1_000_000,
        datadir=str(datadir),
    )
    owners = app.topic(owners_name, partitions=n, value_serializer="raw")

    @app.agent(owners)
    async def _owners(stream: Any) -> None:
        """Never receives anything: subscribing makes Faust assign the owners' partitions."""
        async for _ in stream:
            pass

    store = checkpoint_store(settings)
    restored = restore(settings, store) if settings.learn else Restored()
    model = restored.model or load_or_create_model(settings, options)
    handler = build_handler(settings, model, options)
    metrics = PipelineMetrics()
    model_lock = threading.Lock()
    lanes: list[HotPath] = []
    topics = [input_topic(settings)]

    def written_offsets() -> dict[tuple[str, int], int]:
        merged: dict[tuple[str, int], int] = {}
        for lane in lanes:
            merged.update(lane.written_offsets())
        return merged

    learner: Learner | None = None
    if settings.learn:
        sync = None
        if settings.sync_mode != "off":
            sync = create_kafka_sync(
                settings.sync_mode, model, kafka_config=settings.kafka_config(),
                topic=f"{app_id}-sync", worker_id=options.worker_id,
                every_updates=settings.sync_every_updates, every_ms=settings.sync_every_ms,
                round_timeout_ms=settings.sync_round_timeout_ms, shards=settings.sync_shards,
                start_position=restored.manifest.get("sync") or None)
        hooks = build_hooks(settings, model, restored, options.worker_id, written_offsets,
                            sync, store)
        if learns_from_feedback(settings):
            table = app.Table("join", partitions=n, key_type=bytes, value_type=bytes)
            join = JoinState(FaustTableStore(table, app), int(settings.join_window_s * 1000))
            codec = make_codec("feedback", "json", settings.schema_registry_url,
                               settings.feedback_topic)
            learner = FeedbackLearner(model, settings.effective_learn_batch_size, hooks,
                                      feedback_topic=settings.feedback_topic, join=join,
                                      codec=codec)
            topics.append(settings.feedback_topic)
        else:
            users = None
            if isinstance(model, MatrixFactorization):
                table = app.Table("users", partitions=n, key_type=bytes, value_type=bytes)
                users = UserState(FaustTableStore(table, app), model)
            learner = RatingLearner(model, settings.effective_learn_batch_size, hooks,
                                    users=users)
    # A restored checkpoint's offsets: replay the tail it does not reflect (one worker's own
    # state; with parameter sync the shared state comes from the sync log instead).
    start_offsets = restored.start_offsets if settings.sync_mode == "off" else {}

    partition_state: PartitionState | None = None
    if isinstance(learner, FeedbackLearner):
        partition_state = learner.join
    elif isinstance(learner, RatingLearner):
        partition_state = learner.users
    for _ in range(options.lanes):
        assignment = FollowedAssignment(topics, start_offsets=start_offsets)
        if partition_state is not None:
            assignment.carry(partition_state, model_lock)
        lanes.append(build_lane(settings, handler, metrics, model_lock, assignment,
                                f"{app_id}-offsets", learner))

    def share(parts: Iterable[int], lane: int) -> frozenset[int]:
        return frozenset(p for p in parts if p % len(lanes) == lane)

    # Faust sends on_rebalance_complete from its table recovery, which can finish after the
    # next rebalance has begun; the assignment read at that moment may be one this worker no
    # longer holds. So lanes get the partitions of the latest rebalance, recorded as Faust
    # assigns them and withdrawn as soon as the next one revokes them.
    settled: frozenset[int] | None = None

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        nonlocal settled
        settled = None
        parts = {tp.partition for tp in revoked if tp.topic == owners_name}
        if not parts:
            return
        done = [lane.assignment.post("revoke", share(parts, i))  # type: ignore[attr-defined]
                for i, lane in enumerate(lanes)]
        loop = asyncio.get_running_loop()
        for event in done:  # each lane commits what it wrote before the partitions move
            await loop.run_in_executor(None, event.wait, 30.0)

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        nonlocal settled
        settled = frozenset(tp.partition for tp in assigned if tp.topic == owners_name)

    @app.on_rebalance_complete.connect
    async def _recovered(sender: Any, **_: Any) -> None:
        if settled is None:
            log.info("table recovery finished during a new rebalance; lanes wait for it")
            return
        for i, lane in enumerate(lanes):
            lane.assignment.post("assign", share(settled, i))  # type: ignore[attr-defined]

    metrics_key = f"metrics:{settings.app}:{options.worker_id}"
    redis_client = redis.Redis.from_url(settings.redis_url)

    @app.service
    class HotPathService(mode.Service):
        """Starts the lanes with the worker; stops them (and commits) on shutdown."""

        async def on_start(self) -> None:
            self._stop = threading.Event()
            self._threads = []
            for i, lane in enumerate(lanes):
                thread = threading.Thread(target=self._run_lane, args=(lane,),
                                          name=f"hot-path-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
            log.info("streaminfer %s worker %s: %d lane(s) on %s, model %s %s",
                     settings.app, options.worker_id, len(lanes), topics, model.name,
                     model.version)

        def _run_lane(self, hot_path: HotPath) -> None:
            try:
                hot_path.run(self._stop)
            except Exception:
                log.exception("hot path lane crashed; stopping the worker")
                os.kill(os.getpid(), 15)

        async def on_stop(self) -> None:
            self._stop.set()
            loop = asyncio.get_running_loop()
            for thread in self._threads:
                await loop.run_in_executor(None, thread.join, 30.0)

    @app.timer(1.0)
    async def publish_metrics() -> None:
        snapshot = {**metrics.snapshot(), "model_version": str(model.version),
                    "worker": options.worker_id,
                    "partitions": sorted({p for lane in lanes for _, p in lane.assignment.owned})}
        if learner is not None:
            with model_lock:
                snapshot["learning"] = learner.snapshot()
        text = json.dumps(_finite(snapshot))  # strict JSON: NaN (e.g. AUC of one class) -> null
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: redis_client.set(metrics_key, text, ex=10))

    return app
