"""A model that does (almost) nothing, for measuring the bare I/O path.

The benchmark swaps it in for a real model to see what decoding, batching, Kafka and Redis
cost on their own. It has the full model surface so the worker cannot tell the difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streaminfer.models.base import Model, ModelVersion

__all__ = ["IdentityModel"]


class IdentityModel(Model):
    """Scores a feature matrix with its first column, anything else with a constant 0.5."""

    name = "identity"

    def __init__(self, *, base_version: str = "v1", **_ignored: Any) -> None:
        self.version = ModelVersion(base_version, 0)

    def predict(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, torch.Tensor) and batch.ndim == 2 and batch.shape[1] > 0:
            return batch[:, 0].detach().to("cpu", torch.float32)
        if isinstance(batch, np.ndarray) and batch.ndim == 2 and batch.shape[1] > 0:
            return torch.from_numpy(np.ascontiguousarray(batch[:, 0], dtype=np.float32))
        return torch.full((len(batch),), 0.5, dtype=torch.float32)

    def learn(self, batch: Any, targets: Any) -> float:
        self._bump()
        return 0.0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._version_state()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._load_version_state(state)

    def config(self) -> dict[str, Any]:
        return {"base_version": self.version.base}
