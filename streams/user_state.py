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
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as st_load
from streaminfer.models.recommender import MatrixFactorization, UserRows
from streaminfer.streams.join import JoinStore

__all__ = ["UserState", "decode_users", "encode_users", "user_key"]

_PREFIX = b"u:"


def user_key(partition: int, user: str) -> bytes:
    """``u:<partition>:<user id>``: the partition in the key lets a store list a partition's
    users (the user id may itself contain ``:``)."""
    return b"u:%d:%s" % (partition, user.encode("utf-8"))


Layout = tuple[tuple[str, tuple[int, ...]], ...]


def encode_users(rows: UserRows) -> list[bytes]:
    """One safetensors buffer per user: float32 ``emb``, ``bias``, ``optim.<name>``, and
    ``seen`` (uint8: the JSON list of item ids).

    Written by hand, because this runs for every touched user of every batch on the hot
    path: the float parts of all users are gathered into one array, and the users share one
    header layout, formatted from a cached prefix (~10x cheaper than a ``safetensors.save``
    per user; bench/user_state.py).
    """
    if not len(rows):
        return []
    parts = [("emb", rows.emb), ("bias", rows.bias),
             *((f"optim.{k}", v) for k, v in sorted(rows.optim.items()))]
    layout = tuple((name, tuple(t.shape[1:])) for name, t in parts)
    prefix = _HEADERS.get(layout)
    if prefix is None:
        prefix = _HEADERS[layout] = _header_prefix(layout)
    head, size = prefix
    n = len(rows)
    floats = np.concatenate([t.detach().to("cpu", torch.float32).reshape(n, -1).numpy()
                             for _, t in parts], axis=1)
    out = []
    for k, seen_ids in enumerate(rows.seen):
        seen = json.dumps(seen_ids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        header = f'{head}{len(seen)}],"data_offsets":[{size},{size + len(seen)}]}}}}'.encode()
        header += b" " * (-len(header) % 8)
        out.append(b"".join([len(header).to_bytes(8, "little"), header, floats[k].tobytes(),
                             seen]))
    return out


_HEADERS: dict[Layout, tuple[str, int]] = {}


def _header_prefix(layout: Layout) -> tuple[str, int]:
    """The header up to the ``seen`` entry's shape, and the float tensors' byte size."""
    entries, offset = [], 0
    for name, shape in layout:
        size = 4 * math.prod(shape)
        entries.append(json.dumps({name: {"dtype": "F32", "shape": list(shape),
                                          "data_offsets": [offset, offset + size]}})[1:-1])
        offset += size
    return "{" + ",".join(entries) + ',"seen":{"dtype":"U8","shape":[', offset


def decode_users(records: Sequence[tuple[str, bytes]]) -> UserRows:
    """Inverse of :func:`encode_users` for ``(user id, value)`` pairs."""
    if not records:
        return UserRows([], torch.zeros(0, 0), torch.zeros(0, 1))
    decoded = [st_load(value) for _, value in records]
    names = [k.removeprefix("optim.") for k in decoded[0] if k.startswith("optim.")]
    return UserRows(
        ids=[user for user, _ in records],
        emb=torch.from_numpy(np.stack([d["emb"] for d in decoded])),
        bias=torch.from_numpy(np.stack([d["bias"] for d in decoded])),
        seen=[tuple(json.loads(d["seen"].tobytes())) for d in decoded],
        optim={name: torch.from_numpy(np.stack([d[f"optim.{name}"] for d in decoded]))
               for name in names},
    )


@dataclass
class UserState:
    """Writes touched users to the store after learning; loads a partition's users on assign."""

    store: JoinStore
    model: MatrixFactorization
    saved: int = 0  # changelog records written
    loaded: int = 0  # users loaded from the table on assignment
    loaded_by_partition: dict[int, int] = field(default_factory=dict)
    save_s: float = 0.0  # time spent exporting and encoding (the hot-path overhead)
    _owned: set[int] = field(default_factory=set)

    def save(self, users: Sequence[str], partitions: Sequence[int]) -> None:
        """Write the current rows of the batch's users, each under the partition it came on."""
        start = time.perf_counter()
        pairs = dict.fromkeys(zip(partitions, users, strict=True))
        rows = self.model.export_users(user for _, user in pairs)
        partition_of = {user: partition for partition, user in pairs}
        records = [(partition_of[user], user_key(partition_of[user], user), value)
                   for user, value in zip(rows.ids, encode_users(rows), strict=True)]
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
        self.model.import_users(decode_users(found))
        self.loaded += len(found)
        return len(found)

    def drop(self, partitions: set[int]) -> None:
        """Partitions moved away: their rows stay in memory until they come back (reloaded)."""
        self._owned -= set(partitions)

    def stats(self) -> dict[str, Any]:
        return {"users_saved": self.saved, "users_loaded": self.loaded,
                "users_loaded_by_partition": dict(sorted(self.loaded_by_partition.items())),
                "user_state_ms": round(self.save_s * 1000, 1)}
