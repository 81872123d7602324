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

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from models.recommender import MatrixFactorization, UserRow
from streams.join import JoinStore

__all__ = ["UserState", "decode_user", "encode_user", "user_key"]

_PREFIX = b"u:"


def user_key(partition: int, user: str) -> bytes:
    """``u:<partition>:<user id>``: the partition in the key lets a store list a partition's
    users (the user id may itself contain ``:``)."""
    return b"u:%d:%s" % (partition, user.encode("utf-8"))


def encode_user(row: UserRow) -> bytes:
    """safetensors bytes: float32 ``emb``, ``bias``, ``optim.<name>``; seen item ids in the
    metadata."""
    tensors = {"emb": _f32(row.emb), "bias": _f32(row.bias),
               **{f"optim.{k}": _f32(v) for k, v in row.optim.items()}}
    return st_save(tensors, metadata={"seen": json.dumps(row.seen)})


def _f32(tensor: torch.Tensor) -> Any:
    return tensor.detach().to("cpu", torch.float32).numpy()


def decode_user(value: bytes) -> UserRow:
    tensors = st_load(value)
    size = int.from_bytes(value[:8], "little")
    meta = json.loads(value[8 : 8 + size]).get("__metadata__", {})
    optim = {k.removeprefix("optim."): torch.from_numpy(v) for k, v in tensors.items()
             if k.startswith("optim.")}
    return UserRow(torch.from_numpy(tensors["emb"]), torch.from_numpy(tensors["bias"]),
                   tuple(json.loads(meta.get("seen", "[]"))), optim)


@dataclass
class UserState:
    """Writes touched users to the store after learning; loads a partition's users on assign."""

    store: JoinStore
    model: MatrixFactorization
    saved: int = 0  # changelog records written
    loaded: int = 0  # users loaded from the table on assignment
    save_s: float = 0.0  # time spent exporting and encoding (the hot-path overhead)
    _owned: set[int] = field(default_factory=set)

    def save(self, users: Sequence[str], partitions: Sequence[int]) -> None:
        """Write the current rows of the batch's users, each under the partition it came on."""
        start = time.perf_counter()
        pairs = dict.fromkeys(zip(partitions, users, strict=True))
        rows = self.model.export_users(user for _, user in pairs)
        for partition, user in pairs:
            row = rows.get(user)
            if row is not None:
                self.store.put(partition, user_key(partition, user), encode_user(row))
                self.saved += 1
        self.save_s += time.perf_counter() - start

    def load(self, partitions: set[int]) -> int:
        """Load the users of newly owned ``partitions`` into the model; returns how many."""
        new = set(partitions) - self._owned
        self._owned |= new
        if not new:
            return 0
        rows: dict[str, UserRow] = {}
        for key, value in self.store.items(new):
            if key.startswith(_PREFIX):
                rows[key.split(b":", 2)[2].decode("utf-8")] = decode_user(value)
        self.model.import_users(rows)
        self.loaded += len(rows)
        return len(rows)

    def drop(self, partitions: set[int]) -> None:
        """Partitions moved away: their rows stay in memory until they come back (reloaded)."""
        self._owned -= set(partitions)

    def callbacks(self, lock: AbstractContextManager[Any]
                  ) -> tuple[Callable[[frozenset[int]], None], Callable[[frozenset[int]], None]]:
        """``on_assigned`` / ``on_revoked`` for a lane's assignment, under the model lock."""

        def assigned(parts: frozenset[int]) -> None:
            with lock:
                self.load(set(parts))

        def revoked(parts: frozenset[int]) -> None:
            with lock:
                self.drop(set(parts))

        return assigned, revoked

    def stats(self) -> dict[str, Any]:
        return {"users_saved": self.saved, "users_loaded": self.loaded,
                "user_state_ms": round(self.save_s * 1000, 1)}
