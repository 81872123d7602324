"""Assembling a worker's learner: restore from the newest checkpoint, metrics, side outputs.

Kept apart from ``streams.app`` so the order of restoring reads in one place: model state,
progressive metrics and input offsets come from the same checkpoint, so they agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from streaminfer.connectors.params_publisher import ParamsPublisher
from streaminfer.models.base import Model
from streaminfer.models.checkpoint_store import CheckpointStore
from streaminfer.models.progressive import metrics_for, metrics_from_state
from streaminfer.models.sync import Sync
from streaminfer.models.tensorboard import ScalarLogger
from streaminfer.streams.app import App
from streaminfer.streams.learning import LearnerHooks
from streaminfer.streams.settings import Settings
from streaminfer.streams.wiring import store_from_url

__all__ = ["Restored", "build_hooks", "restore"]

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]


@dataclass
class Restored:
    """What the newest checkpoint gave back (empty when there is none)."""

    model: Model | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def start_offsets(self) -> Offsets:
        return {(topic, int(p)): int(o)
                for topic, parts in self.manifest.get("offsets", {}).items()
                for p, o in parts.items()}


def checkpoint_store(settings: Settings) -> CheckpointStore | None:
    return store_from_url(settings.checkpoint_url) if settings.checkpoint_url else None


def restore(settings: Settings, app: App, store: CheckpointStore | None,
            model: Model) -> Restored:
    """The newest checkpoint of ``app``, loaded into ``model`` (the app's freshly built
    one), if a store is configured and holds one."""
    if store is None:
        return Restored()
    ref = store.latest(app.name)
    if ref is None:
        return Restored()
    model, manifest = store.load(ref, device=settings.device, into=model)
    log.info("restored %s %s from checkpoint %s", model.name, model.version, ref.location)
    return Restored(model, manifest)


def build_hooks(settings: Settings, app: App, model: Model, restored: Restored, worker_id: str,
                written_offsets: Callable[[], Offsets], sync: Sync | None,
                store: CheckpointStore | None,
                on_saved: Callable[[], None] | None = None) -> LearnerHooks:
    """Metrics (continued from the checkpoint), checkpoints, TensorBoard, params in Redis."""
    state = restored.manifest.get("metrics")
    kind = app.learning.metrics if app.learning is not None else None
    progressive = (metrics_from_state(state) if state
                   else metrics_for(kind) if kind is not None else None)
    hooks = LearnerHooks(progressive=progressive, sync=sync)
    if settings.tensorboard_dir:
        logger = ScalarLogger(settings.tensorboard_dir, every_s=5.0, prefix=app.name)
        hooks.scalars = logger.log
    if settings.publish_params_every_s > 0:
        publisher = ParamsPublisher(redis.Redis.from_url(settings.redis_url), app.name,
                                    every_s=settings.publish_params_every_s, worker=worker_id)
        hooks.publish_params = publisher.maybe_publish
    if store is not None:
        last = [time.monotonic()]

        def save_checkpoint(force: bool) -> None:
            if not force and time.monotonic() - last[0] < settings.checkpoint_every_s:
                return
            last[0] = time.monotonic()
            offsets: dict[str, dict[str, int]] = {}
            for (topic, partition), offset in written_offsets().items():
                offsets.setdefault(topic, {})[str(partition)] = offset
            ref = store.save(model, {
                "app": app.name, "app_spec": settings.app, "worker": worker_id,
                "offsets": offsets,
                "sync": sync.position() if sync is not None else {},
                "metrics": progressive.state() if progressive is not None else {},
            })
            store.prune(app.name, settings.checkpoint_keep)
            log.info("checkpoint %s at %s", ref.location, model.version)
            if on_saved is not None:
                on_saved()

        hooks.checkpoint = save_checkpoint
    return hooks
