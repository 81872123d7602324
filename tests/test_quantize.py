"""``--quantize int8``: the int8 copy scores within 0.01 of the fp32 master, and follows it."""

from __future__ import annotations

import numpy as np
import torch

from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.quantize import Int8Serving


def _trained(hidden: int = 256) -> tuple[OnlineClassifier, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    model = OnlineClassifier(8, hidden=hidden, seed=0, device="cpu", lr=0.01)
    for start in range(0, 2048, 128):
        model.learn(x[start:start + 128], y[start:start + 128])
    return model, x[2048:]


def test_int8_scores_within_001_of_fp32() -> None:
    """Every row within 0.01 of fp32 (the input layer stays fp32: see ``_int8_layers``)."""
    model, x = _trained()
    serving = Int8Serving(model, refresh_s=0.0)
    fp32, int8 = model.predict(x), serving.predict(x)
    diff = (fp32 - int8).abs()
    print(f"\n|int8 - fp32| over {len(x)} rows: mean {float(diff.mean()):.5f}, p99 "
          f"{float(diff.quantile(0.99)):.5f}, max {float(diff.max()):.5f}")
    assert float(diff.max()) < 0.01
    first, last = serving.copy.net.body[0], serving.copy.net.body[2]
    assert type(first) is torch.nn.Linear  # the input layer stays fp32
    assert isinstance(last, torch.ao.nn.quantized.dynamic.Linear)


def test_int8_copy_follows_learning_at_most_every_refresh() -> None:
    model, x = _trained(hidden=32)
    serving = Int8Serving(model, refresh_s=3600)
    built = serving.copy.version
    model.learn(x[:128], np.ones(128, np.float32))
    assert serving.current().version == built  # too soon: the copy trails the master
    serving.refresh_s = 0.0  # as if the refresh interval had passed
    assert serving.current().version == model.version
    assert serving.refreshes == 1
    assert float((serving.predict(x) - model.predict(x)).abs().mean()) < 0.01
    # the master still learns in fp32
    assert model.net.body[0].weight.dtype == torch.float32
