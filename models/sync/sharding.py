"""Place a delta's pieces on the sync topic's partitions, greedily by size.

Like TensorFlow's ``replica_device_setter`` with ``GreedyLoadBalancingStrategy``: biggest
piece first, each onto the least-loaded shard so far, so no partition carries much more than
its share. Big embedding deltas arrive already split by row ranges (see ``Delta.pieces``).
Deterministic: ties go to the lowest shard index.
"""

from __future__ import annotations

import heapq

import torch

__all__ = ["nbytes", "place"]


def nbytes(piece: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in piece.values())


def place(pieces: list[dict[str, torch.Tensor]], shards: int) -> list[dict[str, torch.Tensor]]:
    """``shards`` tensor dicts (some maybe empty) that together hold every piece."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    heap = [(0, s) for s in range(shards)]
    order = sorted(range(len(pieces)), key=lambda i: (-nbytes(pieces[i]), i))
    for i in order:
        load, shard = heapq.heappop(heap)
        out[shard].update(pieces[i])
        heapq.heappush(heap, (load + nbytes(pieces[i]), shard))
    return out
