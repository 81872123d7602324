"""Parameter synchronisation between stream workers, over a shared partitioned log.

Each worker learns online from its own partitions; shared parameters (classifier weights and
standardisation statistics; recommender item embeddings, item biases and global mean)
converge across workers by exchanging deltas on a sync topic. Per-key state (user tables) is
not broadcast. See ``docs/sync.md`` for the protocol.

This package is the algorithm only (pure torch): the log is a :class:`Transport`, Kafka's is
``connectors.sync_transport.KafkaTransport``, and ``streams.wiring.create_kafka_sync`` builds a
sync on it. All methods are called from the worker's hot-path thread, between batches, and
never block for long::

    sync = create_sync("sync", model, transport=..., worker_id="w1")
    model.learn(batch, targets); sync.after_learn()
    sync.poll()            # apply what arrived
    sync.position()        # JSON-able, store it with the checkpoint
"""

from __future__ import annotations

from typing import Any, Protocol

from streaminfer.errors import ConfigError
from streaminfer.models.base import Model
from streaminfer.models.sync.adapter import SharedState, Table, shared_state, shared_tensors
from streaminfer.models.sync.async_mode import AsyncSync
from streaminfer.models.sync.base import OffSync, SyncPosition
from streaminfer.models.sync.delta import Delta, TableDelta
from streaminfer.models.sync.rounds import RoundSync
from streaminfer.models.sync.transport import MemoryLog, SyncMessage, Transport

__all__ = [
    "AsyncSync",
    "Delta",
    "MemoryLog",
    "OffSync",
    "RoundSync",
    "SharedState",
    "Sync",
    "SyncMessage",
    "SyncPosition",
    "Table",
    "TableDelta",
    "Transport",
    "check_mode",
    "create_sync",
    "shared_state",
    "shared_tensors",
]

MODES = ("off", "async", "sync")


def check_mode(mode: str) -> None:
    """Refuse an unknown mode before anything (e.g. a Kafka transport) is built for it."""
    if mode not in MODES:
        raise ConfigError(f"sync mode must be one of {MODES}, got {mode!r}")


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
    transport: Transport | None = None,
    worker_id: str = "worker",
    every_updates: int = 50,
    every_ms: float = 1000.0,
    round_timeout_ms: float = 10_000.0,
    aggregate: str = "sum",
    start_position: SyncPosition | dict[str, Any] | None = None,
) -> Sync:
    """A sync of ``mode`` for ``model`` over ``transport`` (one partition per shard).

    ``transport`` is the log (``MemoryLog(shards).transport()`` in unit tests; Kafka through
    ``streams.wiring.create_kafka_sync``), opened at ``start_position.offsets``.
    ``start_position`` is what ``position()`` returned before a restart; without it a worker
    reads the sync log from the beginning (and, in ``sync`` mode, replays every round).
    """
    check_mode(mode)
    if mode == "off":
        return OffSync()
    if isinstance(start_position, dict):
        start_position = SyncPosition.from_json(start_position)
    if transport is None:
        raise ConfigError(f"sync mode {mode!r} needs a transport (the sync log)")
    common: dict[str, Any] = {
        "worker_id": worker_id, "every_updates": every_updates, "every_ms": every_ms,
    }
    if mode == "async":
        return AsyncSync(model, transport, **common)
    return RoundSync(
        model, transport, round_timeout_ms=round_timeout_ms, aggregate=aggregate,
        start=start_position, **common,
    )
