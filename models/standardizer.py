"""Running feature standardisation that lives inside the model's state.

Why inside the model: a checkpoint must score exactly like the model that wrote it, so the
mean/variance used to scale inputs are saved and restored with the weights.

Why Welford (Chan et al.'s batched merge) rather than an EMA: it is exact and order-free for
the data seen so far, has no decay hyper-parameter, and is numerically stable in float64. The
cost is that it adapts slowly to drift late in a long stream; a worker that needs faster
adaptation can reset the statistics by starting a new base version.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Standardizer"]


class Standardizer(nn.Module):
    """``(x - mean) / sqrt(var)`` with mean/var updated online in float64 buffers."""

    def __init__(self, num_features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(num_features, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(num_features, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the batch's count/mean/M2 into the running ones (Chan's parallel update)."""
        n_b = x.shape[0]
        if n_b == 0:
            return
        xb = x.to(torch.float64)
        mean_b = xb.mean(dim=0)
        m2_b = ((xb - mean_b) ** 2).sum(dim=0)
        n_a = self.count.clone()
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta.square() * (n_a * n_b / total)
        self.count.copy_(total)

    @property
    def var(self) -> torch.Tensor:
        """Population variance; 1 before any data so an untrained model passes inputs through."""
        return torch.where(self.count > 0, self.m2 / self.count.clamp_min(1.0), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A (so far) constant feature keeps scale 1: dividing by ~0 would blow up the next
        # different value. torch.where keeps this sync-free on CUDA.
        var = self.var
        scale = torch.where(var > self.eps, torch.rsqrt(var), 1.0).to(x.dtype)
        return (x - self.mean.to(x.dtype)) * scale
