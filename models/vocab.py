"""String id -> embedding row, growing on first sight up to a fixed capacity.

Why grow-then-hash: embedding tables are preallocated to ``capacity`` rows so a step never
reallocates (and device memory is known at start). Each new id takes the next free row, so
up to ``capacity`` ids get rows of their own. After that, an unseen id is not added; it maps
to ``blake2b(id) % capacity`` and shares that row (the hashing trick). blake2b, not Python's
``hash()``, because the mapping must be the same in every process and after a restart. The
vocabulary is part of the model state, so a restored model maps ids exactly as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["Vocabulary"]


class Vocabulary:
    """Ordered id -> row map with a hashed overflow once ``capacity`` rows are taken."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"vocabulary capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []
        # _ids as an array for ids_of: the first _filled cells, with room to grow (doubling,
        # so a catalogue that keeps growing costs amortised O(1) per new id, not a rebuild)
        self._array = np.empty(0, dtype=object)
        self._filled = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def full(self) -> bool:
        return len(self._ids) >= self.capacity

    def _hashed(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.capacity

    def row(self, key: str, *, grow: bool = True) -> int | None:
        """Row for ``key``; allocates one on first sight if ``grow`` and there is room.

        Returns ``None`` only for an unseen id with ``grow=False`` while rows are still free
        (the caller decides how to score an unknown id).
        """
        found = self._rows.get(key)
        if found is not None:
            return found
        if self.full:
            return self._hashed(key)
        if not grow:
            return None
        if not isinstance(key, str):
            raise ValueError(f"ids must be str, got {type(key).__name__}: {key!r}")
        row = len(self._ids)
        self._rows[key] = row
        self._ids.append(key)
        return row

    def rows(self, keys: Iterable[str]) -> torch.Tensor:
        """int64 rows for ``keys``, growing the vocabulary as needed."""
        keys = keys if isinstance(keys, list | tuple) else list(keys)
        get = self._rows.get
        found = [get(k) for k in keys]  # the hot path: known ids, one dict lookup each
        if None in found:
            found = [self.row(k) if r is None else r for r, k in zip(found, keys, strict=True)]
        return torch.tensor(found, dtype=torch.int64)

    def id_of(self, row: int) -> str:
        """The id that owns ``row`` (the first one, if hashed overflow ids share it)."""
        return self._ids[row]

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`id_of` for an array of rows, as an object array of its shape (a batch's
        top-N lists: one gather from the ids as an array, extended as ids are added)."""
        n, filled = len(self._ids), self._filled
        if filled < n:
            if len(self._array) < n:
                grown = np.empty(max(n, 2 * len(self._array)), dtype=object)
                grown[:filled] = self._array[:filled]
                self._array = grown
            self._array[filled:n] = self._ids[filled:n]
            self._filled = n
        return self._array[rows]

    @property
    def ids(self) -> list[str]:
        """Ids in row order (row i belongs to ids[i])."""
        return list(self._ids)

    def to_tensor(self) -> torch.Tensor:
        """The ids as a uint8 tensor of UTF-8 JSON, so the vocabulary fits in safetensors."""
        data = json.dumps(self._ids, ensure_ascii=False).encode("utf-8")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()

    def load_ids(self, ids: list[str]) -> None:
        """Replace the contents with ``ids`` (row i = ids[i])."""
        if len(ids) > self.capacity:
            raise ValueError(f"vocabulary has {len(ids)} ids but capacity is {self.capacity}")
        if len(set(ids)) != len(ids):
            raise ValueError("vocabulary ids must be unique")
        self._ids = list(ids)
        self._array, self._filled = np.empty(0, dtype=object), 0
        self._rows = {k: i for i, k in enumerate(self._ids)}

    def load_tensor(self, tensor: torch.Tensor) -> None:
        """Inverse of :meth:`to_tensor`."""
        ids = json.loads(bytes(tensor.to(torch.uint8).cpu().numpy().tobytes()).decode("utf-8"))
        if not isinstance(ids, list) or not all(isinstance(k, str) for k in ids):
            raise ValueError("vocabulary tensor must hold a JSON list of strings")
        self.load_ids(ids)
