"""What every sync mode shares: counting updates, sending a sharded delta, reassembling one.

Wire format of the sync topic (one record per non-empty shard of a delta, plus close markers):

* value: safetensors bytes of that shard's tensors (see :mod:`models.sync.delta`)
* headers: ``sync.kind`` (``delta`` | ``close``), ``sync.mode``, ``sync.worker`` (worker id and
  a per-process incarnation, ``w1#3fa2c9d0``), ``sync.round`` (rounds) or ``sync.seq``
  (async), ``sync.shard`` and ``sync.shards`` (this record's shard index, and how many
  records the delta has), ``sync.sent_ms`` (wall clock, for staleness) and ``sync.updates``
  (local learn steps the delta covers).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.sync.delta import Delta, decode, encode
from streaminfer.models.sync.replica import Replica
from streaminfer.models.sync.sharding import place
from streaminfer.models.sync.transport import SyncMessage, Transport

__all__ = ["OffSync", "SyncBase", "SyncPosition"]

MAX_POLL_MESSAGES = 2000


@dataclass(frozen=True, slots=True)
class SyncPosition:
    """Where to resume the sync log: per-partition offsets, last applied round, its members.

    Offsets point at the oldest record still needed (a delta not yet applied), not at the
    read position, so nothing buffered in memory is lost across a restart.
    """

    offsets: dict[int, int] = field(default_factory=dict)
    round: int = 0
    members: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "round": self.round,
            "members": None if self.members is None else list(self.members),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyncPosition:
        members = data.get("members")
        return cls(
            {int(p): int(o) for p, o in data.get("offsets", {}).items()},
            int(data.get("round", 0)),
            None if members is None else tuple(members),
        )


class Assembly:
    """The shards of one worker's delta as they arrive, in any partition order."""

    def __init__(self, shards: int, sent_ms: float, updates: int) -> None:
        self.shards, self.sent_ms, self.updates = shards, sent_ms, updates
        self.first_seen = time.monotonic()  # local clock: a replay reads old deltas quickly
        self.parts: dict[int, bytes] = {}
        self.where: list[tuple[int, int]] = []  # (partition, offset) of each record

    def add(self, msg: SyncMessage) -> None:
        self.parts[int(msg.headers["sync.shard"])] = msg.value
        self.where.append((msg.partition, msg.offset))

    @property
    def complete(self) -> bool:
        return len(self.parts) >= self.shards

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.parts.values())

    def delta(self) -> Delta:
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(self.parts):
            tensors.update(decode(self.parts[shard]))
        return Delta.from_tensors(tensors)


def assembly_for(msg: SyncMessage) -> Assembly:
    h = msg.headers
    return Assembly(int(h["sync.shards"]), float(h.get("sync.sent_ms", 0)),
                    int(h.get("sync.updates", 0)))


class SyncBase:
    """Counts local updates, decides when to publish, sends sharded deltas, keeps stats."""

    mode: ClassVar[str]

    def __init__(
        self,
        model: Model,
        transport: Transport,
        *,
        worker_id: str,
        every_updates: int,
        every_ms: float,
    ) -> None:
        if every_updates < 1:
            raise ValueError(f"every_updates must be >= 1, got {every_updates}")
        if every_ms <= 0:
            raise ValueError(f"every_ms must be > 0, got {every_ms}")
        if "#" in worker_id or not worker_id:
            raise ValueError(f"worker_id must be non-empty without '#', got {worker_id!r}")
        self.model, self.transport = model, transport
        self.replica = Replica(model)
        self.worker_id = worker_id
        self.participant = f"{worker_id}#{uuid.uuid4().hex[:8]}"
        self.every_updates, self.every_s = every_updates, every_ms / 1000.0
        self.updates = 0  # local learn steps not yet in a published delta
        self._last_publish = time.monotonic()
        self._counters: dict[str, float] = {
            "published": 0, "applied": 0, "bytes_out": 0, "bytes_in": 0, "messages_out": 0,
            "rows_out": 0, "ignored": 0, "publish_s": 0.0, "poll_s": 0.0, "learn_calls": 0,
        }

    # -- the API the stream code calls -------------------------------------------------------

    def after_learn(self) -> None:
        self.updates += 1
        self._counters["learn_calls"] += 1
        self._maybe_publish(time.monotonic())

    def poll(self) -> int:
        start = time.perf_counter()
        try:
            return self._poll(self.transport.receive(MAX_POLL_MESSAGES))
        finally:
            self._counters["poll_s"] += time.perf_counter() - start

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "worker": self.participant, "pending_updates": self.updates,
                **self._counters}

    def close(self) -> None:
        self.transport.close()

    # -- for the modes ---------------------------------------------------------------------

    def _poll(self, messages: Sequence[SyncMessage]) -> int:
        raise NotImplementedError

    def _maybe_publish(self, now: float) -> None:
        raise NotImplementedError

    def _count_peer_updates(self, updates: int) -> None:
        """A version counts every update its weights hold, a peer's as well as its own, so
        workers that have exchanged all their deltas serve the same ``v1+uN``."""
        version = self.model.version
        self.model.version = ModelVersion(version.base, version.updates + max(0, updates))

    def _send(self, delta: Delta, seq_header: tuple[str, int]) -> None:
        """Split ``delta`` over the partitions (greedy by size) and send one record per shard."""
        start = time.perf_counter()
        parts = self.transport.partitions
        pieces = delta.pieces(max(64 * 1024, delta.nbytes // parts))
        shards = [(p, t) for p, t in enumerate(place(pieces, parts)) if t] or [(0, {})]
        now_ms = time.time() * 1000.0
        for index, (partition, tensors) in enumerate(shards):
            value = encode(tensors)
            headers = {
                "sync.kind": "delta", "sync.mode": self.mode, "sync.worker": self.participant,
                seq_header[0]: str(seq_header[1]), "sync.shard": str(index),
                "sync.shards": str(len(shards)), "sync.sent_ms": f"{now_ms:.3f}",
                "sync.updates": str(self.updates),
            }
            self.transport.send(partition, value, headers)
            self._counters["bytes_out"] += len(value)
            self._counters["messages_out"] += 1
        self._counters["rows_out"] += sum(len(t.ids) for t in delta.tables.values())
        self._counters["published"] += 1
        self._counters["publish_s"] += time.perf_counter() - start

    def _oldest(self, retained: list[tuple[int, int]]) -> dict[int, int]:
        offsets = self.transport.positions()
        for partition, offset in retained:
            offsets[partition] = min(offsets.get(partition, offset), offset)
        return offsets


class OffSync:
    """``mode="off"``: the same API, doing nothing, so the stream code needs no branches."""

    mode = "off"

    def after_learn(self) -> None:
        return None

    def poll(self) -> int:
        return 0

    def position(self) -> dict[str, Any]:
        return SyncPosition().to_json()

    def stats(self) -> dict[str, Any]:
        return {"mode": "off"}

    def close(self) -> None:
        return None
