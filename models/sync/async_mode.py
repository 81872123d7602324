"""``mode="async"``: publish own deltas every K updates or T ms; add peers' deltas on arrival.

Like asynchronous data-parallel SGD without a parameter server: the Kafka log is the shared
channel and every worker is its own replica. No worker ever waits for another.

Staleness bound: a peer's update reaches a worker's live parameters at most ``T ms`` (the
peer's publish interval) + transport latency + one batch (the time until the next ``poll``)
after the peer learned it, and a worker lags a peer by at most K of that peer's updates plus
what is in flight. ``stats()`` reports the measured delay from send to apply.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from streaminfer.models.base import Model
from streaminfer.models.sync.base import Assembly, SyncBase, SyncPosition, assembly_for
from streaminfer.models.sync.transport import SyncMessage, Transport

__all__ = ["AsyncSync"]


class AsyncSync(SyncBase):
    """Asynchronous delta exchange: ``params += peer_delta`` as each complete delta arrives."""

    mode = "async"
    #: an incomplete delta whose shards stopped coming this long ago (its sender died between
    #: two shards) is dropped and counted, so such deltas cannot pile up over a long run
    incomplete_ttl_s = 60.0

    def __init__(self, model: Model, transport: Transport, **kwargs: Any) -> None:
        super().__init__(model, transport, **kwargs)
        self._seq = 0
        self._pending: dict[tuple[str, int], Assembly] = {}
        self._staleness_ms: deque[float] = deque(maxlen=10_000)  # recent deltas only
        self._peer_updates = 0
        self._counters["dropped_incomplete"] = 0

    def _maybe_publish(self, now: float) -> None:
        if self.updates == 0:
            return
        if self.updates < self.every_updates and now - self._last_publish < self.every_s:
            return
        delta, rows = self.replica.take()
        if not delta.empty:
            self._send(delta, ("sync.seq", self._seq))
            self._seq += 1
        self.replica.commit_own(delta, rows)
        self.updates = 0
        self._last_publish = now

    def _poll(self, messages: Sequence[SyncMessage]) -> int:
        applied = 0
        for msg in messages:
            h = msg.headers
            if h.get("sync.mode") != self.mode or h.get("sync.kind") != "delta":
                self._counters["ignored"] += 1
                continue
            worker = h["sync.worker"]
            if worker == self.participant:
                continue  # already in our own parameters
            key = (worker, int(h["sync.seq"]))
            assembly = self._pending.get(key)
            if assembly is None:
                assembly = self._pending[key] = assembly_for(msg)
            assembly.add(msg)
            if assembly.complete:
                del self._pending[key]
                self.replica.apply_remote(assembly.delta())
                self._staleness_ms.append(max(0.0, time.time() * 1000.0 - assembly.sent_ms))
                self._peer_updates += assembly.updates
                self._count_peer_updates(assembly.updates)
                self._counters["bytes_in"] += assembly.nbytes
                self._counters["applied"] += 1
                applied += 1
        now = time.monotonic()
        stale = [k for k, a in self._pending.items() if now - a.first_seen > self.incomplete_ttl_s]
        for key in stale:
            del self._pending[key]
        self._counters["dropped_incomplete"] += len(stale)
        self._maybe_publish(now)
        return applied

    def position(self) -> dict[str, Any]:
        retained = [w for a in self._pending.values() for w in a.where]
        return SyncPosition(self._oldest(retained)).to_json()

    def stats(self) -> dict[str, Any]:
        lag = sorted(self._staleness_ms)
        return {
            **super().stats(),
            "peer_updates_applied": self._peer_updates,
            "incomplete_deltas": len(self._pending),
            "staleness_ms_mean": sum(lag) / len(lag) if lag else None,
            "staleness_ms_p99": lag[min(len(lag) - 1, int(0.99 * len(lag)))] if lag else None,
            "staleness_ms_max": lag[-1] if lag else None,
        }
