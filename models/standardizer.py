"""Running feature standardisation that lives inside the model's state.

Why inside the model: a checkpoint must score exactly like the model that wrote it, so the
statistics used to scale inputs are saved and restored with the weights.

Why additive sufficient statistics (count, sum, sum of squares in float64) rather than
Welford's (count, mean, M2): workers that learn in parallel exchange *deltas* of their state
(see :mod:`models.sync`), and only additive statistics merge by adding deltas. In float64 the
``E[x^2] - E[x]^2`` cancellation costs about ``1e-16 * mean^2 / var`` relative error, far below
anything that matters for scaling inputs at our magnitudes. Like Welford it is exact and
order-free for the data seen so far and has no decay hyper-parameter; it adapts slowly to
drift late in a long stream (start a new base version to reset it).

The saved state also carries a derived ``mean`` (for humans reading a checkpoint); loading
ignores it, and a legacy Welford state (``mean`` + ``m2``) is converted on load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Standardizer"]


class Standardizer(nn.Module):
    """``(x - mean) / sqrt(var)`` with count/sum/sum-of-squares kept in float64 buffers."""

    def __init__(self, num_features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(num_features, dtype=torch.float64))
        self.register_buffer("sumsq", torch.zeros(num_features, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add the batch's count, sum and sum of squares to the running ones."""
        if x.shape[0] == 0:
            return
        xb = x.to(torch.float64)
        # add_ rather than +=: an augmented assignment also sets the attribute again, which
        # on a Module goes through its buffer bookkeeping (a fifth of this call)
        self.count.add_(xb.shape[0])
        self.sum.add_(xb.sum(dim=0))
        self.sumsq.add_(xb.square().sum(dim=0))

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the data seen so far (0 before any data)."""
        return self.sum / self.count.clamp_min(1.0)

    @property
    def var(self) -> torch.Tensor:
        """Population variance; 1 before any data so an untrained model passes inputs through."""
        n = self.count.clamp_min(1.0)
        mean = self.sum / n
        var = (self.sumsq / n - mean.square()).clamp_min(0.0)
        return torch.where(self.count > 0, var, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A (so far) constant feature keeps scale 1: dividing by ~0 would blow up the next
        # different value. torch.where keeps this sync-free on CUDA.
        var = self.var
        scale = torch.where(var > self.eps, torch.rsqrt(var), 1.0).to(x.dtype)
        return (x - self.mean.to(x.dtype)) * scale

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "mean"] = self.mean.detach().clone()

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # torch hands us its own copy of the caller's dict, so editing it here is safe.
        mean = state_dict.pop(prefix + "mean", None)
        m2 = state_dict.pop(prefix + "m2", None)
        count = state_dict.get(prefix + "count")
        if m2 is not None and mean is not None and count is not None:
            # A checkpoint written by the Welford version: convert to additive statistics.
            mean64, n = mean.to(torch.float64), count.to(torch.float64)
            state_dict.setdefault(prefix + "sum", mean64 * n)
            state_dict.setdefault(prefix + "sumsq", m2.to(torch.float64) + n * mean64.square())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
