"""The recommender's per-key state: each user's rows live with the partition that owns the user.

Parameter sync shares item parameters between workers; user rows are not broadcast. Ratings
are keyed by user, so all of a user's ratings arrive on one partition ``p``, and the worker
that owns ``p`` is the only one that learns that user. After each learning step the touched
users' rows (``MatrixFactorization.export_users``) are written to a changelog-backed table
(a Faust table in the worker, a dict in tests), one record per touched user, under
``u:<p>:<user id>``. When partitions are assigned (after Faust restored the table) their users
are loaded into the model, so a user's state moves with its partition on rebalance. Rows of
revoked partitions stay in memory (harmless: no rating of theirs reaches this worker until the
partition comes back, and then the table's newer rows replace them).
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
    """Writes touched users to the store after learning; loads a partition's users on assign."""

    store: JoinStore
    model: KeyedModel
    saved: int = 0  # changelog records written
    loaded: int = 0  # users loaded from the table on assignment
    loaded_by_partition: dict[int, int] = field(default_factory=dict)
    save_s: float = 0.0  # time spent exporting and encoding (the hot-path overhead)
    _owned: set[int] = field(default_factory=set)

    def save(self, users: Sequence[str], partitions: Sequence[int]) -> None:
        """Write the current rows of the batch's users, each under the partition it came on."""
        start = time.perf_counter()
        pairs = dict.fromkeys(zip(partitions, users, strict=True))
        exported = self.model.export_keys(user for _, user in pairs)
        partition_of = {user: partition for partition, user in pairs}
        records = [(partition_of[user], user_key(partition_of[user], user), value)
                   for user, value in exported]
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
        """Partitions moved away: their rows stay in memory until they come back (reloaded)."""
        self._owned -= set(partitions)

    def stats(self) -> dict[str, Any]:
        return {"users_saved": self.saved, "users_loaded": self.loaded,
                "users_loaded_by_partition": dict(sorted(self.loaded_by_partition.items())),
                "user_state_ms": round(self.save_s * 1000, 1)}
