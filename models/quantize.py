"""An int8 serving copy of a model (``--quantize int8``), refreshed from the fp32 master.

Why a copy: dynamic quantization (``torch.ao.quantization.quantize_dynamic``) replaces each
``nn.Linear`` by an int8-weight kernel that cannot take gradient steps, so learning continues
on the fp32 master and the copy is rebuilt from it between batches. Rebuilding costs a
deepcopy and a quantization pass (well under a millisecond for a hidden=256 MLP, see
``bench/lifecycle.py``); :class:`Int8Serving` does it at most every ``refresh_s`` and only
when the master's version moved. CPU only: quantized kernels are x86/ARM CPU kernels.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.device import Runner
from streaminfer.models.export import inner_module

__all__ = ["Int8Serving", "quantized_copy"]


def quantized_copy(model: Model) -> Model:
    """A shallow copy of ``model`` whose module is a dynamically int8-quantized deep copy
    (Linear layers), running on CPU; it predicts like the master and must not learn."""
    twin = copy.copy(model)
    module = copy.deepcopy(inner_module(model)).cpu().eval()
    quantized = torch.ao.quantization.quantize_dynamic(module, _int8_layers(module),
                                                       dtype=torch.qint8)
    attr = "net" if getattr(model, "net", None) is not None else "module"
    setattr(twin, attr, quantized)
    twin.runner = Runner("cpu")  # type: ignore[attr-defined]
    twin.version = ModelVersion(model.version.base, model.version.updates)
    return twin


def _int8_layers(module: nn.Module) -> set[str] | set[type[nn.Module]]:
    """Every Linear layer but the first, when there are several. The first one reads the raw
    features, whose range is open; quantized per batch (7 bits on x86) they put single scores
    0.02-0.09 off, against 0.005 for hidden activations after it. It is also the narrowest
    layer (inputs x hidden), so fp32 there costs little."""
    linear = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    return set(linear[1:]) if len(linear) > 1 else {nn.Linear}


class Int8Serving:
    """Scores with an int8 copy of ``master``, rebuilt when the master learnt (rate-limited)."""

    def __init__(self, master: Model, refresh_s: float = 1.0) -> None:
        self.master, self.refresh_s = master, refresh_s
        self.copy = quantized_copy(master)
        self._built_at = time.monotonic()
        self.refreshes = 0

    def current(self) -> Model:
        """The copy to serve with; rebuilt first if the master moved and ``refresh_s`` passed."""
        if (self.copy.version != self.master.version
                and time.monotonic() - self._built_at >= self.refresh_s):
            self.copy = quantized_copy(self.master)
            self._built_at = time.monotonic()
            self.refreshes += 1
        return self.copy

    def predict(self, batch: Any) -> torch.Tensor:
        return self.current().predict(batch)
