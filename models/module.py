"""A user's ``torch.nn.Module`` or model file behind the :class:`~streaminfer.models.base.Model`
surface, so the stream code serves, learns and checkpoints it like the built-in models.

* :class:`TorchModel` wraps an ``nn.Module``: ``predict`` runs it under inference mode and the
  chosen output activation; ``learn`` takes one optimiser step on the given loss.
* :class:`FileModel` serves a TorchScript file (``torch.jit.save``) or a ``torch.export``
  program (``.pt2``): inference only, loaded without pickle.

Outputs are ``(n,)`` for one output and ``(n, k)`` for several (heads, class probabilities).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from streaminfer.errors import ConfigError, ModelError
from streaminfer.models._inputs import first_nonfinite
from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.device import Runner, configure_threads
from streaminfer.models.optim import build_optimizer
from streaminfer.models.weights import MAX_WEIGHTS_BYTES

__all__ = ["FileModel", "Loss", "TorchModel", "qualified_name"]

Activation = Literal["sigmoid", "softmax", "none"]
Loss = Literal["bce", "ce", "mse"] | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    # bce takes logits: the module's raw output, before the sigmoid predict() applies.
    "bce": nn.functional.binary_cross_entropy_with_logits,
    "ce": lambda out, y: nn.functional.cross_entropy(out, y.long()),
    "mse": nn.functional.mse_loss,
}


def qualified_name(obj: Any) -> str:
    """``module.Class`` of an object's class: what a checkpoint records to say what it holds."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _activate(out: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(out)
    if activation == "softmax":
        return torch.softmax(out, dim=-1)
    return out


def _as_input(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32)
    return torch.as_tensor(x, dtype=torch.float32)


def _squeeze(out: torch.Tensor) -> torch.Tensor:
    return out.squeeze(-1) if out.ndim == 2 and out.shape[1] == 1 else out


class TorchModel(Model):
    """Any ``nn.Module`` that maps a float32 batch ``(n, d)`` to ``(n,)`` or ``(n, k)``.

    ``activation`` turns the module's raw outputs into served scores (``sigmoid`` for
    independent probabilities, ``softmax`` for classes, ``none`` for regression). ``loss``
    is computed on the raw outputs: ``bce`` (targets in [0, 1], one per output column),
    ``ce`` (target = class index), ``mse``, or any ``loss(outputs, targets)``.

    >>> import torch
    >>> from torch import nn
    >>> model = TorchModel(nn.Linear(3, 2), name="demo", loss="bce", lr=0.1)
    >>> model.predict(torch.zeros(4, 3)).shape
    torch.Size([4, 2])
    >>> model.learn(torch.ones(4, 3), torch.ones(4, 2)) > 0
    True
    >>> str(model.version)
    'v1+u1'
    """

    name = "module"

    def __init__(self, module: nn.Module, *, name: str = "module", loss: Loss = "bce",
                 activation: Activation = "sigmoid", optimizer: str = "adam",
                 lr: float = 1e-3, l2: float = 0.0, device: str | torch.device = "auto",
                 base_version: str = "v1") -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(module).__name__}")
        if isinstance(loss, str) and loss not in _LOSSES:
            raise ConfigError(f"loss must be one of {sorted(_LOSSES)} or a callable, "
                              f"got {loss!r}")
        if activation not in ("sigmoid", "softmax", "none"):
            raise ConfigError(f"activation must be sigmoid, softmax or none, got {activation!r}")
        self.name = name
        configure_threads()  # the built-in models' thread policy: leave a core for I/O
        self.runner = Runner(device)
        self.module = module.to(self.runner.device)
        self.loss_name = loss if isinstance(loss, str) else qualified_name(loss)
        self._loss = _LOSSES[loss] if isinstance(loss, str) else loss
        self.activation = activation
        self.optimizer_name, self.lr, self.l2 = optimizer, lr, l2
        self.version = ModelVersion(base_version, 0)
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(optimizer, dense=params, lr=lr, l2=l2) if params else None

    def predict(self, batch: Any) -> torch.Tensor:
        x = _as_input(batch)
        self.module.eval()
        out = self.runner.infer(lambda t: _activate(self.module(t), self.activation), x)
        return _squeeze(out)

    def learn(self, batch: Any, targets: Any) -> float:
        if self.optimizer is None:
            raise ModelError(f"{self.name}: the module has no trainable parameters")
        x = self.runner.to_device(_as_input(batch))
        y = self.runner.to_device(_as_input(targets))
        if x.shape[0] == 0:
            return 0.0
        where = first_nonfinite(y)
        if where is not None:
            raise ValueError(f"{self.name} expects finite targets, got NaN/inf at row {where[0]}")
        self.module.train()
        self.optimizer.zero_grad()
        out = self.module(x)
        if out.ndim == 2 and out.shape[1] == 1 and y.ndim == 1:
            out = out.squeeze(-1)
        loss = self._loss(out, y)
        loss.backward()
        self.optimizer.step()
        self._bump()
        return float(loss.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"net.{k}": v.detach().cpu() for k, v in self.module.state_dict().items()}
        return {**state, **self._version_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        net = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        try:
            self.module.load_state_dict(net, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{self.name}: saved weights do not fit "
                             f"{qualified_name(self.module)}: {exc}") from None
        self._load_version_state(state)

    def config(self) -> dict[str, Any]:
        return {"module": qualified_name(self.module), "loss": self.loss_name,
                "activation": self.activation, "optimizer": self.optimizer_name,
                "lr": self.lr, "l2": self.l2, "base_version": self.version.base}

    def __repr__(self) -> str:
        return (f"TorchModel({qualified_name(self.module)}, name={self.name!r}, "
                f"loss={self.loss_name!r}, version={self.version}, {self.runner})")


class FileModel(Model):
    """A TorchScript file or a ``torch.export`` ``.pt2`` program, served as is.

    Neither format is unpickled: TorchScript is loaded by ``torch.jit.load`` and ``.pt2`` by
    ``torch.export.load``, whose restricted unpicklers build tensors and containers only (a
    ``torch.save`` file, or an archive whose pickle names ``os.system``, is refused).
    Such a model cannot learn; an app that serves one has no learning.
    """

    name = "file"

    def __init__(self, path: str | Path, *, name: str = "file",
                 activation: Activation = "none", device: str | torch.device = "auto",
                 base_version: str = "v1", max_bytes: int = MAX_WEIGHTS_BYTES) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"model file {self.path} does not exist")
        size = self.path.stat().st_size
        if size > max_bytes:
            raise ModelError(f"model file {self.path} is {size} bytes, over the limit of "
                             f"{max_bytes} (max_model_bytes)")
        self.name = name
        self.runner = Runner(device)
        self.activation = activation
        self.version = ModelVersion(base_version, 0)
        try:
            if self.path.suffix == ".pt2":
                program = torch.export.load(str(self.path))
                self._forward: Callable[[torch.Tensor], torch.Tensor] = program.module()
                self.kind = "torch.export"
            else:
                self._forward = torch.jit.load(str(self.path), map_location=self.runner.device)
                self.kind = "torchscript"
        except Exception as exc:  # a corrupt or foreign file: say which and why
            raise ModelError(f"cannot load model file {self.path}: {exc}") from None
        if self.kind == "torch.export":  # an exported program runs where it was exported
            self.runner = Runner("cpu")

    def predict(self, batch: Any) -> torch.Tensor:
        x = _as_input(batch)
        return _squeeze(self.runner.infer(
            lambda t: _activate(self._forward(t), self.activation), x))

    def learn(self, batch: Any, targets: Any) -> float:
        raise ModelError(f"{self.name}: a {self.kind} file is served as is and cannot learn")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._version_state()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._load_version_state(state)

    def config(self) -> dict[str, Any]:
        return {"file": str(self.path), "kind": self.kind, "activation": self.activation,
                "base_version": self.version.base}

    def __repr__(self) -> str:
        return f"FileModel({str(self.path)!r}, kind={self.kind!r}, version={self.version})"
