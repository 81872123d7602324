"""Where the pure model layer meets the I/O layer: Kafka-backed sync, URL-named checkpoint stores.

``models`` is pure torch and ``connectors`` knows no models, so the objects that need both (a
sync algorithm on a Kafka log, a checkpoint store on Redis) are assembled here, in ``streams``,
the one layer allowed to import the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from streaminfer.connectors.checkpoint_store import RedisCheckpointBlobs
from streaminfer.connectors.redis_client import CLUSTER_SCHEMES, connect
from streaminfer.connectors.registry_store import registry_blobs_from_url
from streaminfer.connectors.sync_transport import KafkaTransport
from streaminfer.errors import ConfigError
from streaminfer.models.base import Model
from streaminfer.models.checkpoint_store import (
    BlobCheckpointStore,
    CheckpointStore,
    LocalCheckpointStore,
)
from streaminfer.models.registry import ModelRegistry
from streaminfer.models.sync import Sync, SyncPosition, check_mode, create_sync
from streaminfer.models.sync.versioned import VersionedTransport
from streaminfer.models.weights import MAX_WEIGHTS_BYTES

__all__ = ["create_kafka_sync", "registry_from_settings", "registry_from_url", "store_from_url"]


def create_kafka_sync(
    mode: str,
    model: Model,
    *,
    kafka_config: dict[str, Any],
    topic: str = "streaminfer-sync",
    worker_id: str = "worker",
    every_updates: int = 50,
    every_ms: float = 1000.0,
    round_timeout_ms: float = 10_000.0,
    shards: int = 4,
    aggregate: str = "sum",
    start_position: SyncPosition | dict[str, Any] | None = None,
    tag: str | None = None,
    topic_policy: dict[str, int] | None = None,
) -> Sync:
    """A sync of ``mode`` for ``model`` on the Kafka topic ``topic`` (``shards`` partitions).

    The topic is created if missing, and read from ``start_position`` (what ``position()``
    returned before a restart), or from the beginning; the other options are
    :func:`models.sync.create_sync`'s. ``topic_policy`` (``Settings.topic_policy()``) gives
    the topic's replication and ``min.insync.replicas``. ``mode="off"`` touches no broker.
    Records carry the model version ``tag`` (default: the model's base version) and only
    records of the current tag are applied (``models.sync.versioned``), so a hot swap never
    mixes versions.
    """
    check_mode(mode)
    if mode == "off":
        return create_sync(mode, model)
    if isinstance(start_position, dict):
        start_position = SyncPosition.from_json(start_position)
    transport = VersionedTransport(KafkaTransport(
        kafka_config, topic, shards, client_id=f"sync-{worker_id}",
        start=None if start_position is None else start_position.offsets,
        topic_policy=topic_policy,
    ), tag or model.version.base)
    return create_sync(
        mode, model, transport=transport, worker_id=worker_id, every_updates=every_updates,
        every_ms=every_ms, round_timeout_ms=round_timeout_ms, aggregate=aggregate,
        start_position=start_position,
    )


def store_from_url(url: str | Path, *, max_bytes: int = MAX_WEIGHTS_BYTES) -> CheckpointStore:
    """The store a URL names: ``/path`` or ``file:///path`` (disk), ``redis://...`` (Redis),
    ``redis+cluster://...`` (Redis Cluster). ``max_bytes`` bounds a checkpoint's weights."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
        return BlobCheckpointStore(RedisCheckpointBlobs(connect(text)), max_bytes=max_bytes)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"file URLs must name a local path (file:///path), got {text!r}")
        return LocalCheckpointStore(unquote(parsed.path), max_bytes=max_bytes)
    if parsed.scheme == "s3":
        raise ConfigError(
            f"S3 checkpoint stores are not supported (got {text!r}); use file:// or redis://"
        )
    if "://" in text:
        raise ConfigError(
            f"checkpoint store URL must be a path, file:// or redis://, got {text!r}"
        )
    return LocalCheckpointStore(text, max_bytes=max_bytes)


def registry_from_url(url: str, *, s3_endpoint: str | None = None,
                      max_bytes: int = MAX_WEIGHTS_BYTES) -> ModelRegistry:
    """The model registry a URL names (see ``connectors.registry_store``)."""
    return ModelRegistry(registry_blobs_from_url(url, s3_endpoint=s3_endpoint),
                         max_bytes=max_bytes)


def registry_from_settings(settings: Any) -> ModelRegistry | None:
    """The registry of ``settings.registry_url``, or ``None`` when none is configured."""
    if not settings.registry_url:
        return None
    return registry_from_url(settings.registry_url, s3_endpoint=settings.registry_s3_endpoint,
                             max_bytes=settings.max_model_bytes)
