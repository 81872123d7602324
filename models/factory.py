"""Build any model from config: ``create_model(app, **options)``.

The same call rebuilds a model from a checkpoint manifest (``create_model(name, **config)``),
and the same seed gives bitwise-identical initial parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from streaminfer.errors import ConfigError
from streaminfer.models.base import Model
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.device import configure_threads
from streaminfer.models.identity import IdentityModel
from streaminfer.models.recommender import MatrixFactorization

__all__ = ["APPS", "create_model"]

APPS: dict[str, type[Model]] = {
    "classifier": OnlineClassifier,
    "recommender": MatrixFactorization,
    "identity": IdentityModel,
}


def create_model(
    app: str,
    *,
    num_features: int | None = None,
    seed: int = 0,
    hidden: int = 0,
    device: str | torch.device = "auto",
    amp: str = "off",
    lr: float | None = None,
    optimizer: str | None = None,
    l2: float | None = None,
    threads: int | None = None,
    **options: Any,
) -> Model:
    """A fresh model for ``app`` (``"classifier" | "recommender" | "identity"``).

    ``lr`` / ``optimizer`` / ``l2`` left as ``None`` take each model's own default (they
    differ: Adam for the classifier, Adagrad for the embedding tables). ``options`` are
    model-specific (e.g. ``num_factors``, ``user_capacity`` for the recommender).
    ``threads`` caps torch's CPU threads (see :func:`models.device.configure_threads`).
    """
    if app not in APPS:
        raise ConfigError(f"app must be one of {sorted(APPS)}, got {app!r}")
    configure_threads(threads)
    tuning = {k: v for k, v in (("lr", lr), ("optimizer", optimizer), ("l2", l2)) if v is not None}
    try:
        if app == "classifier":
            if num_features is None:
                raise ConfigError("the classifier needs num_features")
            return OnlineClassifier(
                num_features, hidden=hidden, seed=seed, device=device, amp=amp,
                **tuning, **options,
            )  # fmt: skip
        if app == "recommender":
            return MatrixFactorization(seed=seed, device=device, amp=amp, **tuning, **options)
        return IdentityModel(**options)
    except TypeError as exc:  # an option the model does not take
        raise ConfigError(f"bad option for {app}: {exc}") from None
