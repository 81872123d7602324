"""The Faust application around the hot path: lifecycle, metrics timer, signals.

Faust runs the worker (``faust.Worker``: logging, SIGTERM handling, a clean shutdown) and the
lower-rate housekeeping on its event loop; the event hot path runs in ``HotPath`` threads with
confluent-kafka consumers in the group ``{consumer_group}-{app}``, so more worker processes
split the partitions between them (see docs/design.md for why not a Faust agent per event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import faust
import mode
import redis

from connectors.avro import make_codec
from connectors.dead_letter import DeadLetterWriter
from connectors.kafka import make_consumer
from connectors.predictions_sink import PredictionsTopicSink
from connectors.redis_sink import RedisPredictionSink, RedisRecommendationSink
from models import checkpoint
from models.base import Model
from models.factory import create_model
from models.recommender import MatrixFactorization
from streams.batcher import AdaptiveLimit, Batcher
from streams.handlers import ClassifierHandler, Handler, RecommenderHandler
from streams.metrics import PipelineMetrics
from streams.pipeline import HotPath, Sinks
from streams.settings import Settings

__all__ = ["WorkerOptions", "build_app", "build_hot_path", "load_or_create_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """Per-process choices that are not deployment settings."""

    lanes: int = 1
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    model_path: Path | None = None
    identity_model: bool = False
    top_n: int = 10
    web_port: int | None = None


def input_topic(settings: Settings) -> str:
    return settings.events_topic if settings.app == "classifier" else settings.ratings_topic


def group_id(settings: Settings) -> str:
    return f"{settings.consumer_group}-{settings.app}"


def load_or_create_model(settings: Settings, options: WorkerOptions) -> Model:
    """A model from ``--model`` (safetensors checkpoint) or a fresh seeded one."""
    if options.model_path is not None:
        model, _manifest = checkpoint.load(options.model_path, device=settings.device)
        if model.name != settings.app:
            raise ValueError(f"{options.model_path} holds a {model.name!r} model, "
                             f"but the app is {settings.app!r}")
        return model
    app = "identity" if options.identity_model else settings.app
    return create_model(app, num_features=settings.num_features, seed=settings.seed,
                        device=settings.device, amp=settings.amp)


def build_handler(settings: Settings, model: Model, options: WorkerOptions) -> Handler:
    codec = make_codec("rating" if settings.app == "recommender" else "event", "json",
                       settings.schema_registry_url, input_topic(settings))
    if settings.app == "recommender" and isinstance(model, MatrixFactorization):
        return RecommenderHandler(model, codec, top_n=options.top_n)
    return ClassifierHandler(model, codec, settings.num_features)


def build_hot_path(settings: Settings, handler: Handler, metrics: PipelineMetrics,
                   model_lock: threading.Lock) -> HotPath:
    """One lane: its own consumer and producers (they are not shared between threads)."""
    consumer = make_consumer(
        settings.kafka_config(), group_id(settings),
        **{"session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
           "max.poll.interval.ms": 60_000, "partition.assignment.strategy": "cooperative-sticky"},
    )
    out_codec = make_codec("prediction", settings.effective_wire_format,
                           settings.schema_registry_url, settings.predictions_topic)
    client = redis.Redis.from_url(settings.redis_url)
    sinks = Sinks(
        redis=RedisPredictionSink(client, settings.app, settings.redis_ttl_s),
        topic=PredictionsTopicSink(settings.kafka_config(), settings.predictions_topic,
                                   out_codec.encode, encode_many=out_codec.encode_many),
        dead_letters=DeadLetterWriter(settings.kafka_config(), settings.dlq_topic),
        recommendations=RedisRecommendationSink(client, settings.redis_ttl_s)
        if settings.app == "recommender" else None,
    )
    limit = AdaptiveLimit(settings.latency_target_ms, settings.batch_max_records)
    batcher = Batcher(consumer, limit, settings.batch_max_wait_ms / 1000, settings.batch_max_bytes)
    return HotPath(consumer, [input_topic(settings)], batcher, handler, sinks, metrics,
                   model_lock=model_lock)


def build_app(settings: Settings, options: WorkerOptions) -> faust.App:
    """A Faust app whose worker runs ``options.lanes`` hot-path threads."""
    brokers = [f"kafka://{server}" for server in settings.bootstrap_servers.split(",")]
    app = faust.App(
        f"{group_id(settings)}-control",
        broker=brokers,
        store="memory://",
        web_enabled=options.web_port is not None,
        web_port=options.web_port or 6066,
        topic_replication_factor=1,
        producer_acks=-1,
    )
    model = load_or_create_model(settings, options)
    handler = build_handler(settings, model, options)
    metrics = PipelineMetrics()
    model_lock = threading.Lock()
    metrics_key = f"metrics:{settings.app}:{options.worker_id}"
    redis_client = redis.Redis.from_url(settings.redis_url)

    @app.service
    class HotPathService(mode.Service):
        """Starts the lanes with the worker; stops them (and commits) on shutdown."""

        async def on_start(self) -> None:
            self._stop = threading.Event()
            self._threads = []
            for lane in range(options.lanes):
                hot_path = build_hot_path(settings, handler, metrics, model_lock)
                thread = threading.Thread(target=self._run_lane, args=(hot_path,),
                                          name=f"hot-path-{lane}", daemon=True)
                thread.start()
                self._threads.append(thread)
            log.info("streaminfer %s worker %s: %d lane(s) on %s, model %s %s",
                     settings.app, options.worker_id, options.lanes, input_topic(settings),
                     model.name, model.version)

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
                    "worker": options.worker_id}
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: redis_client.set(metrics_key, json.dumps(snapshot), ex=10))

    return app
