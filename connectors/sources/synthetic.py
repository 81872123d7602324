"""Reproducible synthetic streams with a known ground truth, for demos, tests and benchmarks.

Generated in numpy chunks: building the records costs little next to encoding and sending.
Event time is left to the caller (``ts=None``) so it can stamp the moment of sending.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SyntheticClassifier", "SyntheticRatings"]

Chunk = tuple[list[dict[str, Any]], np.ndarray]


@dataclass
class SyntheticClassifier:
    """Binary labels from a fixed logistic model over features of uneven scale and offset.

    The uneven scales make feature standardisation matter, as in real data.
    ``chunks`` yields ``(events, labels)``; labels become feedback records.
    """

    seed: int = 0
    num_features: int = 8
    keys: int = 1000
    id_prefix: str = ""  # event ids are f"{id_prefix}{n}"; default "c{seed}-"
    weights: np.ndarray = field(init=False)
    bias: float = field(init=False)

    def __post_init__(self) -> None:
        self.id_prefix = self.id_prefix or f"c{self.seed}-"
        rng = np.random.default_rng(self.seed)
        self.weights = rng.normal(0.0, 1.5, self.num_features) / np.sqrt(self.num_features)
        self.bias = float(rng.normal(0.0, 0.5))
        self._scales = rng.uniform(0.5, 20.0, self.num_features)
        self._offsets = rng.normal(0.0, 10.0, self.num_features)

    def chunks(self, count: int, chunk: int = 5000) -> Iterator[Chunk]:
        rng = np.random.default_rng(self.seed + 1)
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            z = rng.normal(size=(n, self.num_features))
            logits = 3.0 * (z @ self.weights) + self.bias
            labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
            features = (z * self._scales + self._offsets).astype(np.float32).tolist()
            keys = rng.integers(0, self.keys, n).tolist()
            events = [
                {"event_id": f"{self.id_prefix}{start + i}", "key": f"user-{k}", "ts": None,
                 "features": f}
                for i, (k, f) in enumerate(zip(keys, features, strict=True))
            ]
            yield events, labels


@dataclass
class SyntheticRatings:
    """Ratings from a known low-rank model: ``3 + b_u + b_i + <u, v> + noise``."""

    seed: int = 0
    users: int = 500
    items: int = 200
    rank: int = 4
    noise: float = 0.25
    id_prefix: str = ""  # event ids are f"{id_prefix}{n}"; default "r{seed}-"

    def __post_init__(self) -> None:
        self.id_prefix = self.id_prefix or f"r{self.seed}-"
        rng = np.random.default_rng(self.seed)
        self.user_factors = rng.normal(0.0, 1.0 / np.sqrt(self.rank), (self.users, self.rank))
        self.item_factors = rng.normal(0.0, 1.0 / np.sqrt(self.rank), (self.items, self.rank))
        self.user_bias = rng.normal(0.0, 0.3, self.users)
        self.item_bias = rng.normal(0.0, 0.3, self.items)

    def expected(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Noise-free rating: the ground truth a perfect model would predict."""
        dots = np.einsum("ij,ij->i", self.user_factors[users], self.item_factors[items])
        return 3.0 + self.user_bias[users] + self.item_bias[items] + dots

    def chunks(self, count: int, chunk: int = 5000) -> Iterator[Chunk]:
        rng = np.random.default_rng(self.seed + 1)
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            users = rng.integers(0, self.users, n)
            items = rng.integers(0, self.items, n)
            ratings = self.expected(users, items) + rng.normal(0.0, self.noise, n)
            events = [
                {"event_id": f"{self.id_prefix}{start + i}", "user": f"u{u}", "item": f"i{it}",
                 "rating": r, "ts": None}
                for i, (u, it, r) in enumerate(
                    zip(users.tolist(), items.tolist(), ratings.tolist(), strict=True)
                )
            ]
            yield events, ratings.astype(np.float32)
