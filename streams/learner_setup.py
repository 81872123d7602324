"""Assembling a worker's learner: restore from the newest checkpoint, metrics, side outputs.

Kept apart from ``streams.app`` so the order of restoring reads in one place: model state,
progressive metrics and input offsets come from the same checkpoint, so they agree.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streaminfer.connectors.params_publisher import ParamsPublisher
from streaminfer.connectors.redis_client import connect as connect_redis
from streaminfer.models import checkpoint
from streaminfer.models.base import Model
from streaminfer.models.checkpoint_store import (
    BlobCheckpointStore,
    CheckpointStore,
    LocalCheckpointStore,
)
from streaminfer.models.progressive import metrics_for, metrics_from_state
from streaminfer.models.sync import Sync
from streaminfer.models.tensorboard import ScalarLogger
from streaminfer.streams.app import App, Learning
from streaminfer.streams.learning import LearnerHooks
from streaminfer.streams.settings import Settings
from streaminfer.streams.wiring import store_from_url

__all__ = ["Restored", "build_hooks", "restore", "step_rule"]

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
    if not settings.checkpoint_url:
        return None
    return store_from_url(settings.checkpoint_url, max_bytes=settings.max_model_bytes)


def _saved_base(store: CheckpointStore, ref: Any) -> str | None:
    """The version base a checkpoint was saved at, read from its manifest only."""
    try:
        if isinstance(store, LocalCheckpointStore):
            return checkpoint.read_manifest(ref.location).get("base_version")
        if isinstance(store, BlobCheckpointStore):
            _, text = store.blobs.get(ref.app, ref.location)
            return json.loads(text).get("model", {}).get("base_version")
    except (OSError, ValueError, KeyError):
        return None
    return None


def restore(settings: Settings, app: App, store: CheckpointStore | None,
            model: Model) -> Restored:
    """The newest checkpoint of ``app``, loaded into ``model`` (the app's freshly built
    one, or the registry's / ``--model``'s version loaded into it), if a store is configured
    and holds one of the same base version: a checkpoint of ``v3+u500`` continues ``v3``,
    but never replaces a model the registry or ``--model`` chose (docs/lifecycle.md)."""
    if store is None:
        return Restored()
    ref = store.latest(app.name)
    if ref is None:
        return Restored()
    saved = _saved_base(store, ref)
    if saved is not None and saved != model.version.base:
        log.info("newest checkpoint %s is of version %s, the model to serve is %s: not "
                 "restored", ref.location, saved, model.version.base)
        return Restored()
    model, manifest = store.load(ref, device=settings.device, into=model)
    log.info("restored %s %s from checkpoint %s", model.name, model.version, ref.location)
    return Restored(model, manifest)


def build_hooks(settings: Settings, app: App, model: Model, restored: Restored, worker_id: str,
                written_offsets: Callable[[], Offsets], sync: Sync | None,
                store: CheckpointStore | None,
                on_saved: Callable[[], None] | None = None,
                current: Callable[[], Model] | None = None) -> LearnerHooks:
    """Metrics (continued from the checkpoint), checkpoints, TensorBoard, params in Redis.

    ``current`` returns the serving model at call time (it changes on a hot swap); the sync
    is read from ``hooks.sync`` at call time for the same reason."""
    state = restored.manifest.get("metrics")
    kind = app.learning.metrics if app.learning is not None else None
    progressive = (metrics_from_state(state) if state
                   else metrics_for(kind) if kind is not None else None)
    hooks = LearnerHooks(progressive=progressive, sync=sync)
    if settings.tensorboard_dir:
        logger = ScalarLogger(settings.tensorboard_dir, every_s=5.0, prefix=app.name)
        hooks.scalars = logger.log
    if settings.publish_params_every_s > 0:
        publisher = ParamsPublisher(connect_redis(settings.redis_url), app.name,
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
            serving = current() if current is not None else model
            metrics = hooks.progressive
            ref = store.save(serving, {
                "app": app.name, "app_spec": settings.app, "worker": worker_id,
                "offsets": offsets,
                "sync": hooks.sync.position() if hooks.sync is not None else {},
                "metrics": metrics.state() if metrics is not None else {},  # type: ignore[attr-defined]
            })
            store.prune(app.name, settings.checkpoint_keep)
            log.info("checkpoint %s at %s", ref.location, serving.version)
            if on_saved is not None:
                on_saved()

        hooks.checkpoint = save_checkpoint
    return hooks


def step_rule(settings: Settings, learning: Learning) -> dict[str, Any]:
    """The learner's step-rule arguments: the app's ``Learning``, overridden by settings."""
    def pick(setting: Any, own: Any) -> Any:
        return own if setting is None else setting

    return {"learn_batch_size": pick(settings.learn_batch_size, learning.batch_size),
            "max_steps": pick(settings.learn_max_steps, learning.max_steps),
            "one_step_labels": pick(settings.learn_one_step_labels, learning.one_step_labels)}
