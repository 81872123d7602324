"""Parameter synchronisation between stream workers, over a Kafka topic.

Each worker learns online from its own partitions; shared parameters (classifier weights and
standardisation statistics; recommender item embeddings, item biases and global mean)
converge across workers by exchanging deltas on a sync topic. Per-key state (user tables) is
not broadcast. See ``docs/sync.md`` for the protocol.

All methods are called from the worker's hot-path thread, between batches, and never block
for long::

    sync = create_sync("sync", model, kafka_config=..., topic="si-sync", worker_id="w1")
    model.learn(batch, targets); sync.after_learn()
    sync.poll()            # apply what arrived
    sync.position()        # JSON-able, store it with the checkpoint
"""

from __future__ import annotations

from typing import Any, Protocol

from streaminfer.models.base import Model
from streaminfer.models.sync.adapter import SharedState, Table, shared_state, shared_tensors
from streaminfer.models.sync.async_mode import AsyncSync
from streaminfer.models.sync.base import OffSync, SyncPosition
from streaminfer.models.sync.delta import Delta, TableDelta
from streaminfer.models.sync.rounds import RoundSync
from streaminfer.models.sync.transport import KafkaTransport, MemoryLog, Transport, ensure_topic

__all__ = [
    "AsyncSync",
    "Delta",
    "KafkaTransport",
    "MemoryLog",
    "OffSync",
    "RoundSync",
    "SharedState",
    "Sync",
    "SyncPosition",
    "Table",
    "TableDelta",
    "Transport",
    "create_sync",
    "ensure_topic",
    "shared_state",
    "shared_tensors",
]

MODES = ("off", "async", "sync")


class Sync(Protocol):
    """What the stream code calls, whatever the mode."""

    def after_learn(self) -> None: ...

    def poll(self) -> int: ...

    def position(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def create_sync(
    mode: str,
    model: Model,
    *,
    kafka_config: dict[str, Any] | None = None,
    topic: str = "streaminfer-sync",
    worker_id: str = "worker",
    every_updates: int = 50,
    every_ms: float = 1000.0,
    round_timeout_ms: float = 10_000.0,
    shards: int = 4,
    aggregate: str = "sum",
    start_position: SyncPosition | dict[str, Any] | None = None,
    transport: Transport | None = None,
) -> Sync:
    """A sync of ``mode`` for ``model`` on ``topic`` (created with ``shards`` partitions).

    ``transport`` replaces Kafka (e.g. ``MemoryLog(shards).transport()`` in unit tests).
    ``start_position`` is what ``position()`` returned before a restart; without it a worker
    reads the sync topic from the beginning (and, in ``sync`` mode, replays every round).
    """
    if mode not in MODES:
        raise ValueError(f"sync mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return OffSync()
    if isinstance(start_position, dict):
        start_position = SyncPosition.from_json(start_position)
    if transport is None:
        if kafka_config is None:
            raise ValueError(f"sync mode {mode!r} needs kafka_config (bootstrap.servers, ...)")
        transport = KafkaTransport(
            kafka_config, topic, shards, client_id=f"sync-{worker_id}",
            start=None if start_position is None else start_position.offsets,
        )
    common: dict[str, Any] = {
        "worker_id": worker_id, "every_updates": every_updates, "every_ms": every_ms,
    }
    if mode == "async":
        return AsyncSync(model, transport, **common)
    return RoundSync(
        model, transport, round_timeout_ms=round_timeout_ms, aggregate=aggregate,
        start=start_position, **common,
    )
