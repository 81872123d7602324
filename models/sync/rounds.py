"""``mode="sync"``: SyncReplicas-style rounds over the Kafka log, with no coordinator.

Round ``r`` starts from ``base_r``, identical on every worker. Each worker keeps learning
locally and, after K updates or T ms, publishes ``delta = live - base_r`` for round r (an
empty delta if it learned nothing, so it still counts as live). The smallest worker id among
the complete deltas of round r publishes ``CLOSE(r, included)`` to partition 0 once it holds
deltas from every expected worker (the members of round r-1, plus workers seen publishing for
r-1 or r), or when ``round_timeout_ms`` has passed since round r's first delta (a dead or
stalled worker is dropped). If that closer is itself gone, the k-th smallest closes after
``(k + 1) * round_timeout_ms``. Everyone applies round r from the FIRST ``CLOSE(r)`` in
partition 0's order (later ones are ignored) as ``base_{r+1} = base_r + aggregate`` with deltas
summed in worker-id order, so replicas are bit-identical after each round. Local updates made
after publishing carry into round r+1; a worker excluded from round r loses its round-r delta.
``poll`` never blocks: a round closes across polls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streaminfer.models.base import Model
from streaminfer.models.sync.base import Assembly, SyncBase, SyncPosition, assembly_for
from streaminfer.models.sync.transport import SyncMessage, Transport

__all__ = ["RoundSync"]

CLOSE_PARTITION = 0


@dataclass(frozen=True, slots=True)
class _Close:
    included: tuple[str, ...]
    partition: int
    offset: int


class RoundSync(SyncBase):
    """Synchronous rounds: every worker moves from ``base_r`` to the same ``base_{r+1}``."""

    mode = "sync"

    def __init__(
        self,
        model: Model,
        transport: Transport,
        *,
        round_timeout_ms: float,
        aggregate: str = "sum",
        start: SyncPosition | None = None,
        **kwargs: Any,
    ) -> None:
        if aggregate not in ("sum", "mean"):
            raise ValueError(f"aggregate must be 'sum' or 'mean', got {aggregate!r}")
        if round_timeout_ms <= 0:
            raise ValueError(f"round_timeout_ms must be > 0, got {round_timeout_ms}")
        super().__init__(model, transport, **kwargs)
        self.timeout_s, self.mean = round_timeout_ms / 1000.0, aggregate == "mean"
        self.round = start.round if start is not None else 0
        self._published_for: int | None = None
        self._round_started = time.monotonic()
        self._deltas: dict[int, dict[str, Assembly]] = {}
        self._senders: dict[int, set[str]] = {}
        self._first_seen: dict[int, float] = {}
        self._closes: dict[int, _Close] = {}
        self._close_sent: set[int] = set()  # rounds >= self.round only: bounded
        self._members: dict[int, tuple[str, ...]] = {}
        if start is not None and start.members is not None:
            self._members[self.round - 1] = start.members
        self._rounds = {"rounds_closed": 0, "closes_sent": 0, "excluded": 0, "stale_deltas": 0,
                        "round_s_total": 0.0}

    # -- publishing ------------------------------------------------------------------------

    def _maybe_publish(self, now: float) -> None:
        if self._published_for == self.round or self.round in self._closes:
            return
        if self.updates < self.every_updates and now - self._round_started < self.every_s:
            return
        delta, _ = self.replica.take()  # may be empty: it still says "I am alive"
        self._send(delta, ("sync.round", self.round))
        self._published_for = self.round
        self.updates = 0
        self._last_publish = now

    # -- reading and applying -------------------------------------------------------------

    def _poll(self, messages: Sequence[SyncMessage]) -> int:
        now = time.monotonic()
        for msg in messages:
            self._read(msg, now)
        applied = 0
        while self._try_apply():
            applied += 1
        now = time.monotonic()
        self._maybe_close(now)
        self._maybe_publish(now)
        return applied

    def _read(self, msg: SyncMessage, now: float) -> None:
        h = msg.headers
        if h.get("sync.mode") != self.mode:
            self._counters["ignored"] += 1
            return
        r = int(h["sync.round"])
        if h.get("sync.kind") == "close":
            if r >= self.round and r not in self._closes:  # the first CLOSE(r) in the log wins
                included = tuple(json.loads(msg.value.decode("utf-8"))["included"])
                self._closes[r] = _Close(included, msg.partition, msg.offset)
            return
        worker = h["sync.worker"]
        self._senders.setdefault(r, set()).add(worker)
        if r < self.round:
            self._rounds["stale_deltas"] += 1
            return
        self._first_seen.setdefault(r, now)
        assembly = self._deltas.setdefault(r, {}).get(worker)
        if assembly is None:
            assembly = self._deltas[r][worker] = assembly_for(msg)
        assembly.add(msg)

    def _try_apply(self) -> bool:
        r = self.round
        close = self._closes.get(r)
        if close is None:
            return False
        got = self._deltas.get(r, {})
        if not all(w in got and got[w].complete for w in close.included):
            return False  # the included deltas are in the log; they have not all arrived yet
        deltas = [got[w].delta() for w in sorted(close.included)]
        self.replica.apply_round(deltas, mean=self.mean)
        self._count_peer_updates(sum(got[w].updates for w in close.included
                                     if w != self.participant))
        if self._published_for == r and self.participant not in close.included:
            self._rounds["excluded"] += 1
        self._counters["applied"] += 1
        self._counters["bytes_in"] += sum(got[w].nbytes for w in close.included)
        self._members[r] = close.included
        now = time.monotonic()
        self._rounds["rounds_closed"] += 1
        self._rounds["round_s_total"] += now - self._round_started
        for book in (self._deltas, self._closes, self._first_seen):
            book.pop(r, None)
        self._close_sent.discard(r)  # only the current round is asked about
        for book in (self._senders, self._members):  # type: ignore[assignment]
            for old in [k for k in book if k < r - 1]:
                del book[old]
        self.round = r + 1
        self._round_started = now
        return True

    # -- closing -----------------------------------------------------------------------------

    def _maybe_close(self, now: float) -> None:
        r = self.round
        if r in self._closes or r in self._close_sent:
            return
        got = self._deltas.get(r, {})
        complete = sorted(w for w, a in got.items() if a.complete)
        if self.participant not in complete:
            return  # only a worker that took part in round r may close it
        rank = complete.index(self.participant)
        waited = now - self._first_seen.get(r, now)
        if rank == 0:
            if not (self._all_expected(r, complete) or waited >= self.timeout_s):
                return
        elif waited < self.timeout_s * (1 + rank):  # the smaller closers seem to be gone
            return
        payload = {"round": r, "included": complete, "closer": self.participant}
        headers = {"sync.kind": "close", "sync.mode": self.mode, "sync.round": str(r),
                   "sync.worker": self.participant, "sync.shard": "0", "sync.shards": "1"}
        self.transport.send(CLOSE_PARTITION, json.dumps(payload).encode("utf-8"), headers)
        self._close_sent.add(r)
        self._rounds["closes_sent"] += 1

    def _all_expected(self, r: int, complete: list[str]) -> bool:
        previous = self._members.get(r - 1)
        if previous is None:
            return False  # membership unknown (first round): gather for the whole timeout
        expected = set(previous) | self._senders.get(r - 1, set()) | set(self._deltas.get(r, {}))
        workers = {w.split("#", 1)[0]: w for w in complete}
        # A worker restarted under the same id replaces its old incarnation: do not wait for it.
        expected = {w for w in expected if workers.get(w.split("#", 1)[0], w) == w}
        return expected <= set(complete)

    # -- position and stats ------------------------------------------------------------------

    def position(self) -> dict[str, Any]:
        retained = [w for book in self._deltas.values() for a in book.values() for w in a.where]
        retained += [(c.partition, c.offset) for c in self._closes.values()]
        members = self._members.get(self.round - 1)
        return SyncPosition(self._oldest(retained), self.round, members).to_json()

    def stats(self) -> dict[str, Any]:
        closed = self._rounds["rounds_closed"]
        last = self._members.get(self.round - 1)
        return {
            **super().stats(),
            **self._rounds,
            "round": self.round,
            # Nothing local beyond base_r: live params are exactly the shared ones.
            "settled": self.updates == 0 and (self._published_for or -1) < self.round,
            "workers_in_last_round": None if last is None else len(last),
            "last_round_members": None if last is None else list(last),
            "round_s_mean": self._rounds["round_s_total"] / closed if closed else None,
        }
