"""An app: what a worker reads, how it makes features, which model scores them, what it
writes, and what it learns from. Everything here is a plain declaration (no I/O): the
:class:`~streaminfer.streams.worker.Worker` connects, restores and runs it.

::

    import streaminfer as si
    from torch import nn

    app = si.App(
        "churn",
        input=si.Input("customers", schema="customer.avsc", key="customer_id"),
        features=si.Features(si.numeric("age", "balance"), si.categorical("plan", ["a", "b"])),
        model=nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2)),
        outputs=si.Outputs(["p_churn", "p_upsell"]),
        learning=si.Learning(topic="customer-labels", label="label"),
    )

``streaminfer worker --app mypackage.module:app`` serves it. The attribute may also be a
function ``(settings) -> App``, for apps whose shape depends on settings (the built-ins are).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import nn

from streaminfer.errors import ConfigError
from streaminfer.models._seed import seeded
from streaminfer.models.base import Model
from streaminfer.models.device import configure_threads
from streaminfer.models.module import FileModel, Loss, TorchModel
from streaminfer.streams.features import Features
from streaminfer.streams.settings import BUILT_IN

if TYPE_CHECKING:
    from streaminfer.streams.settings import Settings

__all__ = ["App", "Input", "KeyedState", "Learning", "Outputs", "load_app"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

SchemaSpec = str | Path | dict[str, Any]


def _resolve_schema(spec: SchemaSpec, base: Path | None) -> dict[str, Any]:
    """A schema dict from a dict, JSON text, a ``.avsc`` path or a shipped schema's name."""
    from streaminfer.connectors.avro import load_schema

    if isinstance(spec, dict):
        return spec
    text = str(spec)
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"schema: invalid JSON: {exc}") from None
    path = Path(text)
    if path.suffix == ".avsc":
        if not path.is_absolute() and not path.exists() and base is not None:
            path = base / path
        if not path.is_file():
            raise ConfigError(f"schema file {text} not found (looked in the working directory"
                              f"{' and ' + str(base) if base else ''})")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"schema file {path}: invalid JSON: {exc}") from None
    try:
        return load_schema(text)
    except KeyError as exc:
        raise ConfigError(f"schema: {exc.args[0]}") from None


@dataclass(frozen=True)
class Input:
    """The input topic and the shape of its records.

    ``schema`` is a ``.avsc`` path (relative paths are looked up beside the app's module
    too), an Avro schema dict, JSON text, the name of a shipped schema (``"event"``), or
    ``"registry:SUBJECT"`` for the newest version of a Schema Registry subject. Records may
    be Avro (single-object or registry framing) or JSON of the same shape.
    ``key``/``event_id``/``event_time`` name record fields; ``None`` takes the Kafka key,
    ``topic:partition:offset`` and the Kafka timestamp instead.
    """

    topic: str
    schema: SchemaSpec
    key: str | None = "key"
    event_id: str | None = "event_id"
    event_time: str | None = "ts"


@dataclass(frozen=True)
class Outputs:
    """What each prediction holds and where it goes.

    ``names`` are the model's output columns, in order (``(n,)`` for one, ``(n, k)`` for
    ``k``): fields of the Redis hash ``pred:{app}:{key}`` (beside ``event_id``, ``event_ts``,
    ``processed_ts``, ``model_name``, ``model_version``, ``degraded``, ``fallback``) and of
    the predictions topic's records, whose Avro schema is generated from them.
    ``activation`` turns an ``nn.Module``'s raw outputs into scores. ``top_n`` > 0 keeps a
    sorted set ``recs:{key}`` of the model's best items (the model must offer
    ``top_n_arrays(keys, n)``, as ``MatrixFactorization`` does).
    """

    names: Sequence[str] = ("score",)
    activation: Literal["sigmoid", "softmax", "none"] = "sigmoid"
    topic: str | None = "predictions"
    top_n: int = 0

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise ConfigError("outputs.names: at least one output is needed")
        reserved = {"event_id", "event_ts", "processed_ts", "model_name", "model_version",
                    "key", "degraded", "fallback"}
        for name in names:
            if not _FIELD.match(name) or name in reserved:
                raise ConfigError(f"outputs.names: {name!r} must be an identifier and not one "
                                  f"of {sorted(reserved)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"outputs.names: duplicate names in {list(names)}")
        if self.top_n < 0:
            raise ConfigError(f"outputs.top_n must be >= 0, got {self.top_n}")

    def prediction_schema(self, app: str) -> dict[str, Any]:
        """The predictions topic's Avro schema. A single output named ``score`` uses the
        shipped generic ``schemas/prediction.avsc``, so existing readers keep working."""
        from streaminfer.connectors.avro import load_schema

        if self.names == ("score",):
            return load_schema("prediction")
        namespace = "streaminfer." + re.sub(r"[^A-Za-z0-9_]", "_", app)
        return {
            "type": "record", "name": "Prediction", "namespace": namespace,
            "doc": f"A prediction of the {app} app (generated from its declared outputs).",
            "fields": [
                {"name": "event_id", "type": "string"},
                {"name": "key", "type": "string"},
                {"name": "model_name", "type": "string"},
                {"name": "model_version", "type": "string"},
                *({"name": name, "type": "float"} for name in self.names),
                {"name": "event_ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "processed_ts",
                 "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "degraded", "type": "boolean", "default": False},
                {"name": "fallback", "type": ["null", "string"], "default": None},
            ],
        }


@dataclass(frozen=True)
class Learning:
    """Online learning: where labels come from and what the model minimises.

    With ``topic`` set, label records arrive on that topic (co-partitioned with the input)
    and are joined to the features the event was scored with by ``join_on``. Without it,
    ``label`` is a field of the input itself: each batch is scored, then learnt from
    (test-then-train, like ratings).
    ``loss``: ``bce`` (labels in [0, 1]), ``ce`` (label = class index), ``mse``, or a
    callable ``loss(raw outputs, labels)``; it also picks the progressive metrics (AUC and
    log-loss, accuracy, RMSE and MAE). ``optimizer``/``lr``/``l2`` configure an ``nn.Module``'s
    optimiser; a built-in :class:`~streaminfer.models.base.Model` brings its own.
    """

    label: str = "label"
    topic: str | None = None
    schema: SchemaSpec = "feedback"
    join_on: str = "event_id"
    event_time: str | None = "ts"
    loss: Loss = "bce"
    optimizer: Literal["sgd", "adagrad", "adam"] = "adam"
    lr: float = 1e-3
    l2: float = 0.0
    #: examples per optimiser step; a micro-batch with fewer labels takes one smaller step
    batch_size: int = 8
    #: optimiser steps per micro-batch at most (0: no bound): when labels arrive faster than
    #: ``batch_size * max_steps`` per micro-batch, they merge into larger steps
    max_steps: int = 4
    #: labels in one micro-batch from which it takes a single optimiser step: so many labels
    #: mean they arrive faster than steps can run; with fewer (above ``batch_size *
    #: max_steps``) a micro-batch takes ``one_step_labels // labels`` steps (0: off)
    one_step_labels: int = 1024
    #: progressive metrics: ``classifier`` (AUC, log-loss), ``multiclass`` (accuracy),
    #: ``recommender`` (RMSE, MAE); default: by ``loss``
    progressive: Literal["classifier", "multiclass", "recommender"] | None = None

    def __post_init__(self) -> None:
        if (self.lr <= 0 or self.l2 < 0 or self.batch_size < 1 or self.max_steps < 0
                or self.one_step_labels < 0):
            raise ConfigError(f"learning: lr must be > 0, l2 >= 0, batch_size >= 1, "
                              f"max_steps >= 0 and one_step_labels >= 0 (got lr={self.lr}, "
                              f"l2={self.l2}, batch_size={self.batch_size}, "
                              f"max_steps={self.max_steps}, "
                              f"one_step_labels={self.one_step_labels})")

    @property
    def metrics(self) -> str | None:
        """Which progressive metrics to keep (``None``: a custom loss that names none)."""
        if self.progressive is not None:
            return self.progressive
        return {"bce": "classifier", "mse": "recommender", "ce": "multiclass"}.get(
            self.loss if isinstance(self.loss, str) else "")

    def served(self, scores: np.ndarray) -> np.ndarray:
        """One number per row to keep beside the features until the label comes: the
        score for ``bce``/``mse``, the predicted class for ``ce``."""
        if scores.ndim == 1:
            return scores.astype(np.float32)
        if self.loss == "ce":
            return scores.argmax(axis=1).astype(np.float32)
        return scores[:, 0].astype(np.float32)


@dataclass(frozen=True)
class KeyedState:
    """Per-key model state (e.g. user embedding rows) that moves with its partition.

    The rows of the keys that learning touched go to a changelog-backed table
    (``{group}-{app}-{name}-changelog``), once per key every ``flush_s`` (0: after every
    batch), and those of partitions the worker lets go at once; when a partition is assigned,
    its keys' rows are loaded into the model. A worker that dies loses at most ``flush_s`` of
    its keys' updates. The model must offer ``export_keys(keys) -> [(key, bytes)]`` and
    ``import_keys([(key, bytes)])``.
    """

    name: str = "keys"
    flush_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.flush_s >= 0:
            raise ConfigError(f"KeyedState flush_s must be >= 0, got {self.flush_s}")


ModelSpec = nn.Module | Model | str | Path | Callable[["Settings"], Any]


@dataclass
class App:
    """A streaminfer app: input, features, model, outputs, and optionally learning and
    keyed state. Building one does no I/O.

    >>> import streaminfer as si
    >>> from torch import nn
    >>> app = si.App("demo", input=si.Input("events", schema="event"),
    ...              features=si.Features(si.array("features", 8)),
    ...              model=nn.Linear(8, 1))
    >>> app.group_suffix, app.outputs.names
    ('demo', ('score',))
    """

    name: str
    input: Input
    model: ModelSpec
    features: Callable[[dict[str, Any]], Any] | None = None
    outputs: Outputs = field(default_factory=Outputs)
    learning: Learning | None = None
    state: KeyedState | None = None
    #: where the app was defined: relative schema paths are looked up there too
    origin: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"app name {self.name!r} must be letters, digits, '_', '.', '-'")
        if not isinstance(self.input, Input):
            raise ConfigError(f"app {self.name}: input must be streaminfer.Input")
        if self.origin is None:  # the module that built the app (past dataclass __init__)
            caller = sys._getframe(2).f_globals.get("__file__")
            if caller and Path(caller).is_file():
                self.origin = Path(caller).resolve().parent
        if isinstance(self.model, str | Path) and self.learning is not None:
            raise ConfigError(f"app {self.name}: a model file ({self.model}) is served as "
                              "is and cannot learn; drop learning= or give an nn.Module")

    @property
    def group_suffix(self) -> str:
        """What the consumer group, Redis keys and internal topics are named after."""
        return self.name

    @property
    def decode_fields(self) -> list[str] | None:
        """Input fields the worker needs to decode (``None``: all of them)."""
        if isinstance(self.features, Features):
            fields = list(self.features.fields)
            if self.learning is not None and self.learning.topic is None:
                fields.append(self.learning.label)
            return list(dict.fromkeys(fields))
        return None

    def input_schema(self, registry_url: str | None = None) -> dict[str, Any]:
        """The input's Avro schema, resolved (the registry is asked for ``registry:``)."""
        return _schema(self.input.schema, self.origin, registry_url)

    def label_schema(self, registry_url: str | None = None) -> dict[str, Any]:
        assert self.learning is not None
        return _schema(self.learning.schema, self.origin, registry_url)

    def build_model(self, settings: Settings) -> Model:
        """A fresh model: the declared one, wrapped in the :class:`Model` surface.

        Every model gets the worker's torch thread policy (``configure_threads``): with
        torch's default of one thread per core, each tiny op of an online learning step
        forks a thread pool and the step costs 5-7x the CPU (bench/sync.py, docs/learning.md).
        """
        configure_threads()
        spec = self.model
        if callable(spec) and not isinstance(spec, nn.Module | Model):
            with seeded(settings.seed):  # every worker starts from the same weights
                spec = spec(settings)
        if isinstance(spec, Model):
            return spec
        learning = self.learning or Learning()
        if isinstance(spec, nn.Module):
            return TorchModel(spec, name=self.name, loss=learning.loss,
                              activation=self.outputs.activation, optimizer=learning.optimizer,
                              lr=learning.lr, l2=learning.l2, device=settings.device)
        if isinstance(spec, str | Path):
            path = Path(spec)
            if not path.is_absolute() and not path.exists() and self.origin is not None:
                path = self.origin / path
            return FileModel(path, name=self.name, activation=self.outputs.activation,
                             device=settings.device, max_bytes=settings.max_model_bytes)
        raise ConfigError(f"app {self.name}: model must be an nn.Module, a streaminfer Model, "
                          f"a TorchScript/.pt2 path or a function of settings, got "
                          f"{type(spec).__name__}")


def _schema(spec: SchemaSpec, origin: Path | None, registry_url: str | None) -> dict[str, Any]:
    if isinstance(spec, str) and spec.startswith("registry:"):
        subject = spec.removeprefix("registry:")
        if not registry_url:
            raise ConfigError(f"schema {spec!r} needs a schema registry (--schema-registry)")
        from streaminfer.connectors.avro import registry_client

        try:
            latest = registry_client(registry_url).get_latest_version(subject)
        except Exception as exc:
            raise ConfigError(f"schema registry has no subject {subject!r}: {exc}") from None
        return json.loads(latest.schema.schema_str)
    return _resolve_schema(spec, origin)


def load_app(spec: str, settings: Settings) -> App:
    """The app named by ``spec``: a built-in name or ``package.module:attribute``.

    The attribute is an :class:`App` or a function ``(settings) -> App``. As with uvicorn or
    ``faust -A``, the working directory is importable, so ``--app myapp:app`` finds
    ``./myapp.py``.
    """
    target = BUILT_IN.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"app {spec!r}: expected a built-in name ({sorted(BUILT_IN)}) or "
                          "'package.module:attribute'")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"app {spec!r}: no module {module_name!r} (from "
                              f"{Path.cwd()})") from None
        raise
    try:
        found = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"app {spec!r}: module {module_name!r} has no attribute "
                          f"{attr!r}") from None
    app = found if isinstance(found, App) else found(settings) if callable(found) else None
    if not isinstance(app, App):
        raise ConfigError(f"app {spec!r} is a {type(found).__name__}, not a streaminfer.App "
                          "or a function of settings returning one")
    return app
