"""streaminfer: Kafka-native streaming inference and online learning with PyTorch.

Bring a model and an event schema; get a worker that scores micro-batches from Kafka, writes
predictions to Redis and a topic at least once, and learns online from labels::

    import streaminfer as si
    from torch import nn

    app = si.App(
        "churn",
        input=si.Input("customers", schema="customer.avsc", key="customer_id"),
        features=si.Features(si.numeric("age", "balance"), si.hashed("country", 16)),
        model=nn.Sequential(nn.Linear(18, 32), nn.ReLU(), nn.Linear(32, 2)),
        outputs=si.Outputs(["p_churn", "p_upsell"]),
        learning=si.Learning(topic="customer-labels", label="label"),
    )

then ``streaminfer worker --app mymodule:app``. Reading guide: ``streams/app.py`` (the
declarations), ``streams/worker.py`` (the process), ``streams/pipeline.py`` (the hot path),
``connectors/`` (Kafka, Redis, Avro), ``models/`` (pure torch).
"""

from __future__ import annotations

import importlib
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

# In a source checkout the packages live in the repository's top-level folders (``streams/``,
# ``models/``, ``connectors/``, ...); an installed wheel has them inside this package. Looking in
# the checkout too makes ``streaminfer.streams`` resolve the same way in both.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "streams").is_dir() and (_checkout / "streams").is_dir():
    __path__.append(str(_checkout))

__version__ = "0.2.0"

# Public name -> module that defines it. Imported on first use, so ``import streaminfer``
# (and the CLI's --help) stays fast: torch and Faust load only when a name needs them.
_EXPORTS = {
    "App": "streaminfer.streams.app",
    "Input": "streaminfer.streams.app",
    "Outputs": "streaminfer.streams.app",
    "Learning": "streaminfer.streams.app",
    "KeyedState": "streaminfer.streams.app",
    "load_app": "streaminfer.streams.app",
    "Features": "streaminfer.streams.features",
    "numeric": "streaminfer.streams.features",
    "boolean": "streaminfer.streams.features",
    "categorical": "streaminfer.streams.features",
    "hashed": "streaminfer.streams.features",
    "array": "streaminfer.streams.features",
    "InvalidRows": "streaminfer.streams.decode",
    "Batch": "streaminfer.streams.batch",
    "Worker": "streaminfer.streams.worker",
    "Settings": "streaminfer.streams.settings",
    "load_settings": "streaminfer.streams.settings",
    "Model": "streaminfer.models.base",
    "ModelVersion": "streaminfer.models.base",
    "TorchModel": "streaminfer.models.module",
    "FileModel": "streaminfer.models.module",
    "StreaminferError": "streaminfer.errors",
    "ConfigError": "streaminfer.errors",
    "RecordError": "streaminfer.errors",
    "DecodeError": "streaminfer.errors",
    "InvalidRecord": "streaminfer.errors",
    "ModelError": "streaminfer.errors",
    "CheckpointError": "streaminfer.errors",
    "SinkError": "streaminfer.errors",
}

__all__ = [
    "App",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "DecodeError",
    "Features",
    "FileModel",
    "Input",
    "InvalidRecord",
    "InvalidRows",
    "KeyedState",
    "Learning",
    "Model",
    "ModelError",
    "ModelVersion",
    "Outputs",
    "RecordError",
    "Settings",
    "SinkError",
    "StreaminferError",
    "TorchModel",
    "Worker",
    "array",
    "boolean",
    "categorical",
    "hashed",
    "load_app",
    "load_settings",
    "numeric",
]

if TYPE_CHECKING:
    from streaminfer.errors import (
        CheckpointError,
        ConfigError,
        DecodeError,
        InvalidRecord,
        ModelError,
        RecordError,
        SinkError,
        StreaminferError,
    )
    from streaminfer.models.base import Model, ModelVersion
    from streaminfer.models.module import FileModel, TorchModel
    from streaminfer.streams.app import App, Input, KeyedState, Learning, Outputs, load_app
    from streaminfer.streams.batch import Batch
    from streaminfer.streams.decode import InvalidRows
    from streaminfer.streams.features import (
        Features,
        array,
        boolean,
        categorical,
        hashed,
        numeric,
    )
    from streaminfer.streams.settings import Settings, load_settings
    from streaminfer.streams.worker import Worker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streaminfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
