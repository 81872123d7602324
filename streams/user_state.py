"""The recommender's per-key state: each user's rows live with the partition that owns the user.

Parameter sync shares item parameters between workers; user rows are not broadcast. Ratings
are keyed by user, so all of a user's ratings arrive on one partition ``p``, and the worker
that owns ``p`` is the only one that learns that user. The users each learning step touched
(``MatrixFactorization.export_users``) are written to a changelog-backed table (a Faust table
in the worker, a dict in tests), one record per user under ``u:<p>:<user id>``, at most every
``flush_s``: a user rated many times in that span costs one record, not one per batch (each
changelog record costs the worker's event loop ~60 us). The partitions a worker lets go are
written first, so a user's state moves with its partition on rebalance; a worker that dies
loses at most ``flush_s`` of its users' updates (their ratings still trained the items). When
partitions are assigned (after Faust restored the table) their users are loaded into the
model. Rows of revoked partitions stay in memory (harmless: no rating of theirs reaches this
worker until the partition comes back, and then the table's newer rows replace them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streaminfer.streams.join import JoinStore

__all__ = ["KeyedModel", "UserState", "user_key"]

_PREFIX = b"u:"


class KeyedModel(Protocol):
    """A model with per-key rows that move with their partition."""

    def export_keys(self, keys: Iterable[str]) -> list[tuple[str, bytes]]: ...
    def import_keys(self, records: Sequence[tuple[str, bytes]]) -> None: ...


def user_key(partition: int, user: str) -> bytes:
    """``u:<partition>:<user id>``: the partition in the key lets a store list a partition's
    users (the user id may itself contain ``:``)."""
    return b"u:%d:%s" % (partition, user.encode("utf-8"))


@dataclass
class UserState:
    """Writes touched users to the store (at most every ``flush_s``; 0: after every batch);
    loads a partition's users on assign."""

    store: JoinStore
    model: KeyedModel
    flush_s: float = 0.0
    saved: int = 0  # changelog records written
    loaded: int = 0  # users loaded from the table on assignment
    loaded_by_partition: dict[int, int] = field(default_factory=dict)
    save_s: float = 0.0  # time spent exporting and encoding (the hot-path overhead)
    _owned: set[int] = field(default_factory=set)
    _dirty: dict[str, int] = field(default_factory=dict)  # user -> partition it came on
    _flushed_at: float = field(default_factory=time.monotonic)

    def save(self, users: Sequence[str], partitions: Sequence[int]) -> None:
        """Note the batch's users, each under the partition it came on; write them if due."""
        self._dirty.update(zip(users, partitions, strict=True))
        self.flush_due()

    def flush_due(self) -> None:
        """Write the touched users if ``flush_s`` has passed since the last write."""
        if self._dirty and time.monotonic() - self._flushed_at >= self.flush_s:
            self.flush()

    def flush(self, partitions: set[int] | None = None) -> None:
        """Write the current rows of the users touched since their last write (of
        ``partitions`` only, if given)."""
        start = time.perf_counter()
        if partitions is None:
            dirty, self._dirty = self._dirty, {}
            self._flushed_at = time.monotonic()
        else:
            dirty = {user: p for user, p in self._dirty.items() if p in partitions}
            for user in dirty:
                del self._dirty[user]
        if dirty:
            records = [(dirty[user], user_key(dirty[user], user), value)
                       for user, value in self.model.export_keys(dirty)]
            self.store.put_many(records)
            self.saved += len(records)
        self.save_s += time.perf_counter() - start

    def load(self, partitions: set[int]) -> int:
        """Load the users of newly owned ``partitions`` into the model; returns how many."""
        new = set(partitions) - self._owned
        self._owned |= new
        if not new:
            return 0
        found = []
        for key, value in self.store.items(new):
            if key.startswith(_PREFIX):
                _, partition, user = key.split(b":", 2)
                found.append((user.decode("utf-8"), value))
                self.loaded_by_partition[int(partition)] = (
                    self.loaded_by_partition.get(int(partition), 0) + 1)
        self.model.import_keys(found)
        self.loaded += len(found)
        return len(found)

    def drop(self, partitions: set[int]) -> None:
        """Partitions moved away: their touched users are written now, for the next owner;
        their rows stay in memory until they come back (reloaded)."""
        self.flush(set(partitions))
        self._owned -= set(partitions)

    def stats(self) -> dict[str, Any]:
        return {"users_saved": self.saved, "users_loaded": self.loaded,
                "users_loaded_by_partition": dict(sorted(self.loaded_by_partition.items())),
                "user_state_ms": round(self.save_s * 1000, 1)}
