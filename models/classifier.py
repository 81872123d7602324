"""Online binary classifier: logistic regression (``hidden=0``) or a one-hidden-layer MLP.

Input standardisation is part of the model (see :mod:`models.standardizer`), so the score of
a restored checkpoint is identical to the score of the model that wrote it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from streaminfer.models._inputs import as_features, as_targets
from streaminfer.models._seed import seeded
from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.device import Runner
from streaminfer.models.optim import build_optimizer
from streaminfer.models.standardizer import Standardizer

__all__ = ["OnlineClassifier"]


class _Net(nn.Module):
    """Scaler, then linear layers: nothing behaves differently in train and eval mode, so
    the model never switches (``Module.train()`` walks every submodule, each step)."""

    def __init__(self, num_features: int, hidden: int) -> None:
        super().__init__()
        self.scaler = Standardizer(num_features)
        if hidden == 0:
            self.body: nn.Module = nn.Linear(num_features, 1)
        else:
            self.body = nn.Sequential(
                nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )
        # The output layer starts at zero, so an untrained model scores 0.5 instead of
        # confident random scores: the first micro-batch, served before any label arrived,
        # then costs the progressive AUC little (bench/learning_rule.py).
        last = self.body if hidden == 0 else self.body[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(n,)``."""
        return self.body(self.scaler(x)).squeeze(-1)


class OnlineClassifier(Model):
    """``predict(features) -> P(label=1)``; ``learn(features, labels)`` is one BCE step.

    Default optimiser: Adagrad, lr 0.3. Chosen by simulating the steps a worker takes at 2k
    ev/s and at saturation on river's Phishing stream (``bench/learning_rule.py``): its
    per-coordinate decay makes it the least sensitive to how many labels a step holds.

    A batch is a float32 matrix ``(n, num_features)`` (numpy or torch; one vector = one row).
    Labels are 0/1 (soft labels in [0, 1] are accepted).
    """

    name = "classifier"

    def __init__(
        self,
        num_features: int,
        *,
        hidden: int = 0,
        lr: float = 0.3,
        optimizer: str = "adagrad",
        l2: float = 0.0,
        seed: int = 0,
        device: str | torch.device = "auto",
        amp: str = "off",
        base_version: str = "v1",
    ) -> None:
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0 (0 = logistic regression), got {hidden}")
        self.num_features, self.hidden = num_features, hidden
        self.lr, self.optimizer_name, self.l2, self.seed = lr, optimizer, l2, seed
        self.runner = Runner(device, amp)
        self.version = ModelVersion(base_version, 0)
        with seeded(seed):
            net = _Net(num_features, hidden)
        self.net = net.to(self.runner.device)
        self.optimizer = build_optimizer(optimizer, dense=self.net.body.parameters(), lr=lr, l2=l2)

    def _features(self, batch: Any) -> torch.Tensor:
        return as_features(batch, self.num_features, self.name)

    def predict(self, batch: Any) -> torch.Tensor:
        x = self._features(batch)
        return self.runner.infer(lambda t: torch.sigmoid(self.net(t)), x)

    def learn(self, batch: Any, targets: Any) -> float:
        x = self._features(batch)
        y = as_targets(targets, x.shape[0], self.name, low=0.0, high=1.0)
        if x.shape[0] == 0:
            return 0.0
        x, y = self.runner.to_device(x), self.runner.to_device(y)
        self.net.scaler.update(x)
        self.optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(self.net(x), y)
        loss.backward()
        self.optimizer.step()
        self._bump()
        return float(loss.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"net.{k}": v.detach().cpu() for k, v in self.net.state_dict().items()}
        return {**state, **self._version_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        try:
            self.net.load_state_dict(net_state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{self.name} state does not fit this model's config: {exc}") from None
        self._load_version_state(state)

    def config(self) -> dict[str, Any]:
        return {
            "num_features": self.num_features,
            "hidden": self.hidden,
            "lr": self.lr,
            "optimizer": self.optimizer_name,
            "l2": self.l2,
            "seed": self.seed,
            "amp": self.runner.amp,
            "base_version": self.version.base,
        }

    def __repr__(self) -> str:
        return (
            f"OnlineClassifier(num_features={self.num_features}, hidden={self.hidden}, "
            f"version={self.version}, {self.runner})"
        )
