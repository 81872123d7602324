"""A model's serving function as a TorchScript or ``torch.export`` file, and back to tensors.

Why both directions: ``model export`` hands a registered version to a serving stack that has
no streaminfer (Triton, TorchServe, a C++ runtime), and ``model register`` accepts such a file
so a model trained elsewhere can be promoted on the stream. Only the ``nn.Module`` inside a
model is exported (with its output activation); tensors come back out of a file through
``torch.jit.load`` / ``torch.export.load`` (no pickle) and are keyed as the model keys its
state (``net.*``), so an exported version registers back to the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from streaminfer.errors import ModelError
from streaminfer.models.base import Model

__all__ = ["export_file", "inner_module", "input_width", "serving_module", "tensors_from_file"]


def inner_module(model: Model) -> nn.Module:
    """The ``nn.Module`` a model serves with (``net`` of the built-ins, ``module`` of a
    wrapped user module)."""
    for attr in ("net", "module"):
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module):
            return module
    raise ModelError(f"{type(model).__name__} has no nn.Module to export or quantize")


class _Serving(nn.Module):
    def __init__(self, net: nn.Module, activation: str) -> None:
        super().__init__()
        self.net, self.activation = net, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.activation == "sigmoid":
            return torch.sigmoid(out)
        if self.activation == "softmax":
            return torch.softmax(out, dim=-1)
        return out


def serving_module(model: Model) -> nn.Module:
    """Features in, served scores out (the model's activation applied), in eval mode."""
    activation = getattr(model, "activation", "sigmoid")
    return _Serving(inner_module(model), activation).eval()


def input_width(model: Model) -> int:
    """Feature columns the model takes: its config's ``num_features`` or its first Linear."""
    width = model.config().get("num_features")
    if isinstance(width, int):
        return width
    for layer in inner_module(model).modules():
        if isinstance(layer, nn.Linear):
            return layer.in_features
    raise ModelError(f"cannot tell the input width of {type(model).__name__}")


def export_file(model: Model, path: str | Path, kind: str = "torchscript") -> Path:
    """Write ``model``'s serving function to ``path``: ``torchscript`` (``torch.jit.trace``)
    or ``export`` (a ``torch.export`` ``.pt2`` program with a dynamic batch size)."""
    path = Path(path)
    module = serving_module(model).cpu()
    example = torch.zeros(4, input_width(model))
    with torch.no_grad():
        if kind == "torchscript":
            torch.jit.save(torch.jit.trace(module, example), str(path))
        elif kind == "export":
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
        else:
            raise ModelError(f"export kind must be torchscript or export, got {kind!r}")
    return path


def tensors_from_file(path: str | Path) -> dict[str, Any]:
    """The parameters and buffers of a TorchScript or ``.pt2`` file, keyed ``net.*``."""
    path = Path(path)
    try:
        if path.suffix == ".pt2":
            state = dict(torch.export.load(str(path)).state_dict)
        else:
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from None
    if state and all(k.startswith("net.") for k in state):
        return state
    return {f"net.{k}": v for k, v in state.items()}
