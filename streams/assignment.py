"""Who decides which partitions a hot path reads: the Kafka group, or the Faust worker.

* ``GroupAssignment``: the hot path's consumer subscribes as a member of a consumer group
  (standalone use, benchmarks). Revoked partitions are handed over with their written offsets
  committed.
* ``FollowedAssignment``: Faust's consumer group owns membership (its tables' changelog
  partitions move with it); the Faust side posts ``assign``/``revoke`` commands and the hot path
  applies them between batches with manual assignment, committing offsets under a group that
  has no members. So the partitions a lane reads and the table partitions its worker holds
  always agree.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_STORED, Consumer, TopicPartition

__all__ = ["Assignment", "FollowedAssignment", "GroupAssignment", "PartitionState"]

log = logging.getLogger(__name__)

CommitWritten = Callable[[set[tuple[str, int]] | None], None]
Forget = Callable[[set[tuple[str, int]]], None]


class Assignment:
    """Strategy interface; ``owned`` is the set of (topic, partition) currently read."""

    owned: set[tuple[str, int]]

    def start(self, consumer: Consumer, commit_written: CommitWritten, forget: Forget) -> None:
        raise NotImplementedError

    def apply_pending(self, consumer: Consumer, block_s: float = 0.0) -> None:
        """Apply ownership changes that arrived since the last batch (between batches only)."""

    def stop(self) -> None:
        """Nothing to release by default."""


@dataclass
class GroupAssignment(Assignment):
    topics: Sequence[str]
    owned: set[tuple[str, int]] = field(default_factory=set)

    def start(self, consumer: Consumer, commit_written: CommitWritten, forget: Forget) -> None:
        def on_assign(_c: Consumer, partitions: list[TopicPartition]) -> None:
            self.owned |= {(tp.topic, tp.partition) for tp in partitions}

        def on_revoke(_c: Consumer, partitions: list[TopicPartition]) -> None:
            revoked = {(tp.topic, tp.partition) for tp in partitions}
            commit_written(revoked)
            forget(revoked)
            self.owned -= revoked

        def on_lost(_c: Consumer, partitions: list[TopicPartition]) -> None:
            lost = {(tp.topic, tp.partition) for tp in partitions}
            forget(lost)  # another member owns them now: its commits win
            self.owned -= lost

        consumer.subscribe(list(self.topics), on_assign=on_assign, on_revoke=on_revoke,
                           on_lost=on_lost)

    def apply_pending(self, consumer: Consumer, block_s: float = 0.0) -> None:
        """Membership changes arrive inside ``consume()``; nothing to do here."""


class PartitionState(Protocol):
    """Worker state kept per input partition (a join window, user rows)."""

    def load(self, partitions: set[int]) -> Any: ...

    def drop(self, partitions: set[int]) -> None: ...


@dataclass
class _Command:
    kind: str  # "assign" | "revoke"
    partitions: frozenset[int]
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class FollowedAssignment(Assignment):
    """Reads partition numbers ``p`` of every topic in ``topics`` that Faust assigned us."""

    topics: Sequence[str]
    owned: set[tuple[str, int]] = field(default_factory=set)
    _commands: queue.SimpleQueue[_Command] = field(default_factory=queue.SimpleQueue)
    _commit_written: CommitWritten | None = None
    _forget: Forget | None = None
    on_assigned: Callable[[frozenset[int]], None] | None = None
    on_revoked: Callable[[frozenset[int]], None] | None = None
    #: called before partitions are read (before their committed offsets are fetched) and
    #: after they are let go: exactly-once claims and releases their transactional ids here
    before_acquire: Callable[[frozenset[int]], None] | None = None
    after_release: Callable[[frozenset[int]], None] | None = None
    #: Where to start a partition the first time it is assigned (a restored checkpoint's
    #: offsets, to replay the tail the checkpoint does not reflect); else the committed offset.
    start_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: after a freeze (``fence``): the share dropped, when, and how long to wait for Faust
    fenced_share: frozenset[int] | None = None
    fenced_at: float = 0.0
    rejoin_wait_s: float = 15.0

    def carry(self, state: PartitionState, lock: AbstractContextManager[Any]) -> None:
        """Load ``state`` of the partitions the lane takes and drop that of those it lets go,
        under ``lock`` (the model lock: batches read that state)."""

        def assigned(parts: frozenset[int]) -> None:
            with lock:
                state.load(set(parts))

        def revoked(parts: frozenset[int]) -> None:
            with lock:
                state.drop(set(parts))

        self.on_assigned, self.on_revoked = assigned, revoked

    # -- called from Faust's event loop thread ------------------------------------------
    def post(self, kind: str, partitions: frozenset[int]) -> threading.Event:
        command = _Command(kind, partitions)
        self._commands.put(command)
        return command.done

    # -- called from the hot path thread ---------------------------------------------------
    def start(self, consumer: Consumer, commit_written: CommitWritten, forget: Forget) -> None:
        self._commit_written, self._forget = commit_written, forget

    def fence(self, consumer: Consumer) -> None:
        """After a freeze: release every partition (the lane commits nothing while fenced)
        and wait for Faust's next command; if none comes within ``rejoin_wait_s`` the
        membership was kept, and the share is taken again from the committed offsets."""
        share = frozenset(p for _, p in self.owned)
        self._release(consumer, set(self.owned))
        self.fenced_share, self.fenced_at = share, time.monotonic()
        log.warning("frozen: released partitions %s uncommitted; waiting for Faust",
                    sorted(share))

    def apply_pending(self, consumer: Consumer, block_s: float = 0.0) -> None:
        try:
            command = self._commands.get(timeout=block_s) if block_s else (
                self._commands.get_nowait())
        except queue.Empty:
            if (self.fenced_share is not None
                    and time.monotonic() - self.fenced_at > self.rejoin_wait_s):
                share, self.fenced_share = self.fenced_share, None
                log.info("no rebalance after the freeze: reading %s again", sorted(share))
                self._acquire(consumer, {(t, p) for t in self.topics for p in share})
            return
        self.fenced_share = None
        while True:
            self._apply(consumer, command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, consumer: Consumer, command: _Command) -> None:
        asked = {(t, p) for t in self.topics for p in command.partitions}
        # "assign" names the lane's whole share, so anything else it still reads is released:
        # a late or repeated command can never leave two workers reading one partition.
        keep = self.owned - asked if command.kind == "revoke" else asked
        try:
            self._release(consumer, self.owned - keep)
            self._acquire(consumer, keep - self.owned)
            log.info("%s partitions %s; now reading %s", command.kind,
                     sorted(command.partitions), sorted(self.owned))
        finally:
            command.done.set()

    def release_uncommitted(self, consumer: Consumer, tps: set[tuple[str, int]]) -> None:
        """Stop reading ``tps`` without committing (another process took them over)."""
        commit, self._commit_written = self._commit_written, lambda _: None
        try:
            self._release(consumer, tps & self.owned)
        finally:
            self._commit_written = commit

    def acquire_again(self, consumer: Consumer, tps: set[tuple[str, int]]) -> None:
        """Read ``tps`` again from their committed offsets (``before_acquire`` first)."""
        self._acquire(consumer, tps - self.owned)

    def _release(self, consumer: Consumer, tps: set[tuple[str, int]]) -> None:
        """Commit what was written for ``tps``, then stop reading them."""
        if not tps:
            return
        assert self._commit_written is not None and self._forget is not None
        self._commit_written(tps)
        self._forget(tps)
        consumer.incremental_unassign([TopicPartition(t, p) for t, p in sorted(tps)])
        self.owned -= tps
        if self.on_revoked is not None:
            self.on_revoked(frozenset(p for _, p in tps))
        if self.after_release is not None:
            gone = {p for _, p in tps} - {p for _, p in self.owned}
            self.after_release(frozenset(gone))

    def _acquire(self, consumer: Consumer, tps: set[tuple[str, int]]) -> None:
        if not tps:
            return
        if self.before_acquire is not None:
            self.before_acquire(frozenset(p for _, p in tps))
        consumer.incremental_assign(
            [TopicPartition(t, p, self.start_offsets.pop((t, p), OFFSET_STORED))
             for t, p in sorted(tps)])
        self.owned |= tps
        if self.on_assigned is not None:
            self.on_assigned(frozenset(p for _, p in tps))
