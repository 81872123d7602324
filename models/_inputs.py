"""Turn what the stream hands a model into checked host tensors, with errors that say why."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

FeatureInput = np.ndarray | torch.Tensor | list[list[float]] | list[float]


def _to_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", dtype)
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"expected a numeric array, got elements of type {type(array.flat[0])}")
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def first_nonfinite(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first NaN/inf, or ``None`` when all values are finite."""
    # on the host, numpy's check costs a few us where torch's three ops take ~30
    if (tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)
            and np.isfinite(tensor.numpy(force=True)).all()):
        return None
    bad = ~torch.isfinite(tensor)
    if not bool(bad.any()):
        return None
    return tuple(int(i) for i in bad.nonzero()[0])


def as_features(batch: Any, num_features: int | None, who: str) -> torch.Tensor:
    """A finite float32 CPU matrix ``(n, num_features)``; a single vector becomes one row."""
    x = _to_tensor(batch, torch.float32)
    if x.ndim == 1:
        x = x.unsqueeze(0)
    expected = f"(n, {num_features})" if num_features is not None else "(n, features)"
    if x.ndim != 2 or (num_features is not None and x.shape[1] != num_features):
        raise ValueError(f"{who} expects features of shape {expected}, got {tuple(x.shape)}")
    where = first_nonfinite(x)
    if where is not None:
        raise ValueError(
            f"{who} expects finite features, got {x[where].item()} at row {where[0]}, "
            f"column {where[1]}"
        )
    return x.contiguous()


def as_targets(targets: Any, n: int, who: str, *, low: float, high: float) -> torch.Tensor:
    """A finite float32 CPU vector of ``n`` targets within ``[low, high]``."""
    y = _to_tensor(targets, torch.float32).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{who} expects {n} targets (one per row), got {y.shape[0]}")
    where = first_nonfinite(y)
    if where is not None:
        raise ValueError(f"{who} expects finite targets, got {y[where].item()} at row {where[0]}")
    if n and (low > -math.inf or high < math.inf):
        values = y.numpy()
        if values.min() < low or values.max() > high:
            raise ValueError(f"{who} expects targets in [{low}, {high}], got values in "
                             f"[{values.min()}, {values.max()}]")
    return y
