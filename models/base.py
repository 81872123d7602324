"""The one surface every streaminfer model offers, so the stream code knows nothing else.

Like river's ``predict_one`` / ``learn_one``, every model has ``predict(batch)``,
``learn(batch, targets)``, ``state_dict()`` / ``load_state_dict()``, a ``name`` and a
``version``. ``config()`` returns the keyword arguments that rebuild it through
:func:`models.factory.create_model`, which is what checkpoints store.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = ["Model", "ModelVersion"]

_VERSION_RE = re.compile(r"^(?P<base>.+)\+u(?P<updates>\d+)$")


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """Which weights produced a score: a base tag plus how many online updates since.

    Predictions carry ``str(version)`` (``"v1+u42"``) so a consumer can tell two scores for the
    same key apart, and a restored checkpoint reports the same version it was saved with.
    """

    base: str = "v1"
    updates: int = 0

    def __post_init__(self) -> None:
        if not self.base or "+u" in self.base:
            raise ValueError(
                f"version base must be non-empty and not contain '+u', got {self.base!r}"
            )
        if self.updates < 0:
            raise ValueError(f"version updates must be >= 0, got {self.updates}")

    def __str__(self) -> str:
        return f"{self.base}+u{self.updates}"

    def bump(self) -> ModelVersion:
        """The version after one more ``learn`` step."""
        return ModelVersion(self.base, self.updates + 1)

    @classmethod
    def parse(cls, text: str) -> ModelVersion:
        """Inverse of ``str()``: ``"v1+u42"`` -> ``ModelVersion("v1", 42)``."""
        match = _VERSION_RE.match(text)
        if match is None:
            raise ValueError(f"model version must look like 'v1+u42', got {text!r}")
        return cls(match["base"], int(match["updates"]))


class Model(ABC):
    """Base class of every model: predict, learn, and plain-tensor state for checkpoints."""

    name: ClassVar[str]
    version: ModelVersion

    @abstractmethod
    def predict(self, batch: Any) -> torch.Tensor:
        """Scores for ``batch``: a float32 CPU tensor of shape ``(n,)``."""

    @abstractmethod
    def learn(self, batch: Any, targets: Any) -> float:
        """One optimiser step on ``batch``; returns the loss and bumps ``version.updates``."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to score identically, as named CPU tensors (safetensors-ready)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (shapes must match this model's config)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments for ``create_model(self.name, **config)``."""

    def manifest_extra(self) -> dict[str, Any]:
        """JSON-able facts a checkpoint manifest should show a human (e.g. a vocabulary)."""
        return {}

    def _bump(self) -> None:
        self.version = self.version.bump()

    def _version_state(self) -> dict[str, torch.Tensor]:
        return {"meta.updates": torch.tensor(self.version.updates, dtype=torch.int64)}

    def _load_version_state(self, state: dict[str, torch.Tensor]) -> None:
        if "meta.updates" in state:
            self.version = ModelVersion(self.version.base, int(state["meta.updates"].item()))
