"""A model registry: named models with immutable numbered versions and movable labels.

Why not checkpoints: a checkpoint is a worker's private resume point and is pruned; a
registered version is a deliberate, named, immutable artefact that every worker of an app can
be pointed at (``active``), tried beside it (``shadow``, ``canary``) and pointed back from.

Each version is the model's tensors as safetensors bytes plus a JSON manifest::

    {"format": 1, "name": "classifier", "version": 3, "parent": 2,
     "model_class": "streaminfer.models.classifier.OnlineClassifier", "config": {...},
     "created": "2025-...", "created_unix": 1.7e9, "sha256": "<hex of the weights bytes>",
     "tensors": {"net.body.weight": {"shape": [1, 8], "dtype": "float32"}, ...},
     "metrics": {...}, "source": "checkpoint:/path" | "params:classifier:latest" | ...}

Labels are one JSON document per model, ``{"labels": {"active": 3, ...}, "ensemble":
{"members": [3, 5], "weights": "learnt", "eta": 0.05}, "history": [{"label", "version",
"previous", "at"}, ...]}``; ``rollback`` re-points ``active`` to the version it pointed at
before (or to ``--to``). The ensemble names several versions, so it sits beside the labels
(which name one each) and its moves are in the history as label ``ensemble``.

This module is pure (torch + safetensors): the bytes live behind :class:`RegistryBlobs`
(directory, Redis and S3 backends in ``connectors.registry_store``). Loading checks the
sha256 before safetensors parses anything, and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import torch
from safetensors.torch import save as safetensors_save

from streaminfer.errors import RegistryError
from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.checkpoint import model_class
from streaminfer.models.weights import MAX_WEIGHTS_BYTES, load_weights, sha256_hex

__all__ = [
    "FORMAT",
    "WEIGHTINGS",
    "MemoryBlobs",
    "ModelRegistry",
    "RegisteredVersion",
    "RegistryBlobs",
    "base_of",
    "check_outputs",
    "number_of",
]

FORMAT = 1
ACTIVE = "active"
ENSEMBLE = "ensemble"
#: how an ensemble weighs its members' scores (``streams.ensemble``)
WEIGHTINGS = ("learnt", "equal")
_MAX_HISTORY = 1000


class RegistryBlobs(Protocol):
    """Byte-level storage of a registry; backends move bytes and know no torch."""

    def names(self) -> list[str]:
        """Every model that has a version or a label."""
        ...

    def versions(self, name: str) -> list[int]:
        """The version numbers of ``name``, ascending."""
        ...

    def create(self, name: str, version: int, weights: bytes, manifest: str) -> bool:
        """Store a new version; ``False`` (and nothing written) if ``version`` exists."""
        ...

    def read(self, name: str, version: int) -> tuple[bytes, str]:
        """``(weights, manifest)``; raises :class:`RegistryError` if missing."""
        ...

    def read_labels(self, name: str) -> str | None:
        """The labels document of ``name`` (``None`` before the first label)."""
        ...

    def write_labels(self, name: str, text: str) -> None: ...


def base_of(version: int) -> str:
    """The :class:`ModelVersion` base a registered version serves under: ``7`` -> ``"v7"``."""
    return f"v{version}"


def number_of(base: str) -> int | None:
    """Inverse of :func:`base_of` (``None`` for a base that is not a registry version)."""
    if base.startswith("v") and base[1:].isdigit():
        return int(base[1:])
    return None


@dataclass(frozen=True)
class RegisteredVersion:
    """A version's manifest and (verified) tensors."""

    name: str
    version: int
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def _tensor_info(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in sorted(tensors.items())}


def check_outputs(scores: torch.Tensor, rows: int, outputs: int) -> str | None:
    """Why ``scores`` (a model's output on ``rows`` sample rows) cannot be served by an app
    with ``outputs`` output columns, or ``None`` if they can."""
    expected = (rows,) if outputs == 1 else (rows, outputs)
    shape = tuple(scores.shape)
    if shape != expected and not (outputs == 1 and shape == (rows, 1)):
        return f"outputs have shape {list(shape)}, the app needs {list(expected)}"
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).sum())
        return f"{bad} of {scores.numel()} outputs on recent inputs are NaN or infinite"
    return None


class ModelRegistry:
    """Register, list, label and load versions of named models over a :class:`RegistryBlobs`.

    >>> from torch import nn
    >>> from streaminfer.models.module import TorchModel
    >>> registry = ModelRegistry(MemoryBlobs())
    >>> registry.register("demo", TorchModel(nn.Linear(2, 1), name="demo"))
    1
    >>> registry.promote("demo", 1); registry.labels("demo")
    {'active': 1}
    """

    def __init__(self, blobs: RegistryBlobs, *, max_bytes: int = MAX_WEIGHTS_BYTES) -> None:
        self.blobs = blobs
        self.max_bytes = max_bytes  # a version's weights over this are refused unread

    # -- writing versions ------------------------------------------------------------------
    def register(self, name: str, model: Model, *, parent: int | None = None,
                 metrics: Mapping[str, Any] | None = None, source: str = "model",
                 app: str | None = None) -> int:
        """Store ``model``'s tensors as the next version of ``name``; returns its number."""
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("meta.")}
        return self.register_tensors(name, state, model_class=model_class(model),
                                     model_name=model.name, config=model.config(),
                                     parent=parent, metrics=metrics, source=source, app=app)

    def register_tensors(self, name: str, tensors: Mapping[str, torch.Tensor], *,
                         model_class: str | None, model_name: str | None = None,
                         config: Mapping[str, Any] | None = None, parent: int | None = None,
                         metrics: Mapping[str, Any] | None = None, source: str = "tensors",
                         app: str | None = None) -> int:
        """Store raw tensors (from a checkpoint, published params or an exported file)."""
        _check_name(name)
        clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()
                 if not k.startswith("meta.")}
        if not clean:
            raise RegistryError(f"{name}: nothing to register (no tensors)")
        weights = safetensors_save(clean, metadata={"name": name})
        now = time.time()
        manifest: dict[str, Any] = {
            "format": FORMAT, "name": name, "app": app or name, "parent": parent,
            "model_class": model_class, "model_name": model_name,
            "config": dict(config or {}), "metrics": dict(metrics or {}), "source": source,
            "created": datetime.fromtimestamp(now, UTC).isoformat(), "created_unix": now,
            "sha256": sha256_hex(weights), "tensors": _tensor_info(clean),
        }
        if parent is None:
            labels = self.labels(name)
            manifest["parent"] = labels.get(ACTIVE)
        for _ in range(20):  # another registrar may take the number first: take the next
            version = max(self.blobs.versions(name), default=0) + 1
            manifest["version"] = version
            text = json.dumps(manifest, sort_keys=True)
            if self.blobs.create(name, version, weights, text):
                return version
        raise RegistryError(f"{name}: could not allocate a version number (contention)")

    # -- reading ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.blobs.names()

    def versions(self, name: str) -> list[int]:
        return self.blobs.versions(name)

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        _, text = self.blobs.read(name, version)
        return _parse_manifest(name, version, text)

    def get(self, name: str, version: int) -> RegisteredVersion:
        """A version's manifest and tensors, after checking the weights' size, sha256 (which
        every version must record) and safetensors header."""
        weights, text = self.blobs.read(name, version)
        manifest = _parse_manifest(name, version, text)
        tensors = load_weights(weights, where=f"{name} v{version}",
                               sha256=str(manifest.get("sha256")), max_bytes=self.max_bytes,
                               error=RegistryError)
        return RegisteredVersion(name, version, manifest, tensors)

    def load_into(self, model: Model, name: str, version: int) -> dict[str, Any]:
        """Load version ``version`` of ``name`` into ``model`` (the app's freshly built one);
        it then serves as ``v{version}+u0``. Raises :class:`RegistryError` if the checksum,
        the model class or a tensor shape does not fit."""
        found = self.get(name, version)
        saved = found.manifest.get("model_class")
        if saved is not None and saved != model_class(model):
            raise RegistryError(f"{name} v{version} holds a {saved} model, but the app's model "
                                f"is {model_class(model)}")
        ours = {k: v for k, v in model.state_dict().items() if not k.startswith("meta.")}
        for key, tensor in found.tensors.items():
            if key in ours and tuple(ours[key].shape) != tuple(tensor.shape):
                raise RegistryError(f"{name} v{version}: tensor {key!r} has shape "
                                    f"{list(tensor.shape)}, the app's model needs "
                                    f"{list(ours[key].shape)}")
        try:
            model.load_state_dict(dict(found.tensors))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise RegistryError(f"{name} v{version} does not fit the app's model: "
                                f"{exc}") from None
        model.version = ModelVersion(base_of(version), 0)
        return found.manifest

    # -- labels -----------------------------------------------------------------------------
    def _doc(self, name: str) -> dict[str, Any]:
        text = self.blobs.read_labels(name)
        if not text:
            return {"labels": {}, "history": []}
        doc = json.loads(text)
        doc.setdefault("labels", {})
        doc.setdefault("history", [])
        return doc

    def labels(self, name: str) -> dict[str, int]:
        return self.labels_and_ensemble(name)[0]

    def labels_and_ensemble(self, name: str) -> tuple[dict[str, int], dict[str, Any] | None]:
        """:meth:`labels` and :meth:`ensemble` from one read of the labels document (a worker
        polls both every second)."""
        doc = self._doc(name)
        spec = doc.get(ENSEMBLE)
        return {k: int(v) for k, v in doc["labels"].items()}, (dict(spec) if spec else None)

    def history(self, name: str) -> list[dict[str, Any]]:
        return list(self._doc(name)["history"])

    def label(self, name: str, label: str, version: int | None) -> None:
        """Point ``label`` at ``version`` (``None`` removes it); the move is recorded."""
        if not label or not label.replace("-", "").replace("_", "").isalnum():
            raise RegistryError(f"label must be letters, digits, '-' or '_', got {label!r}")
        if version is not None and version not in self.blobs.versions(name):
            raise RegistryError(f"{name} has no version {version} (versions: "
                                f"{self.blobs.versions(name)})")
        doc = self._doc(name)
        previous = doc["labels"].get(label)
        if version is None:
            doc["labels"].pop(label, None)
        else:
            doc["labels"][label] = version
        doc["history"].append({"label": label, "version": version, "previous": previous,
                               "at": time.time()})
        doc["history"] = doc["history"][-_MAX_HISTORY:]
        self.blobs.write_labels(name, json.dumps(doc, sort_keys=True))

    def ensemble(self, name: str) -> dict[str, Any] | None:
        """The ensemble the app serves, ``{"members": [3, 5], "weights": "learnt", "eta":
        0.05}``, or ``None``."""
        return self.labels_and_ensemble(name)[1]

    def set_ensemble(self, name: str, members: list[int] | None, weights: str = "learnt",
                     eta: float = 0.05) -> None:
        """Serve the mean of ``members``' scores (weighted as ``weights`` says; ``eta`` is
        the learning rate of learnt weights); ``None`` or ``[]`` ends the ensemble."""
        doc = self._doc(name)
        previous = doc.get(ENSEMBLE)
        if members:
            if weights not in WEIGHTINGS or not eta > 0:
                raise RegistryError(f"ensemble weights must be one of {WEIGHTINGS} and eta "
                                    f"> 0, got {weights!r} and {eta}")
            unique = sorted(set(members))
            if len(unique) < 2:
                raise RegistryError(f"an ensemble needs two versions or more, got {members}")
            missing = sorted(set(unique) - set(self.blobs.versions(name)))
            if missing:
                raise RegistryError(f"{name} has no version {missing} (versions: "
                                    f"{self.blobs.versions(name)})")
            doc[ENSEMBLE] = {"members": unique, "weights": weights, "eta": float(eta)}
        else:
            doc.pop(ENSEMBLE, None)
        doc["history"].append({"label": ENSEMBLE, "version": doc.get(ENSEMBLE),
                               "previous": previous, "at": time.time()})
        doc["history"] = doc["history"][-_MAX_HISTORY:]
        self.blobs.write_labels(name, json.dumps(doc, sort_keys=True))

    def promote(self, name: str, version: int, label: str = ACTIVE) -> None:
        self.label(name, label, version)

    def active(self, name: str) -> int | None:
        return self.labels(name).get(ACTIVE)

    def rollback(self, name: str, to: int | None = None) -> int:
        """Point ``active`` at ``to``, or at the version it pointed at before the current one
        became active; returns the new active version."""
        if to is None:
            current = self.active(name)
            moves = [h for h in self.history(name) if h["label"] == ACTIVE]
            to = next((h["previous"] for h in reversed(moves)
                       if h["version"] == current and h["previous"] is not None), None)
            if to is None:
                raise RegistryError(f"{name}: nothing to roll back to (active is {current}, "
                                    "no earlier active version); give --to")
        self.promote(name, to)
        return to

    def diff(self, name: str, a: int, b: int) -> dict[str, Any]:
        """Per tensor: shapes, and for equal shapes the max and mean absolute difference."""
        ta, tb = self.get(name, a).tensors, self.get(name, b).tensors
        out: dict[str, Any] = {}
        for key in sorted(set(ta) | set(tb)):
            x, y = ta.get(key), tb.get(key)
            if x is None or y is None:
                out[key] = {"only_in": a if y is None else b}
            elif x.shape != y.shape:
                out[key] = {"shape": [list(x.shape), list(y.shape)]}
            else:
                d = (x.double() - y.double()).abs()
                out[key] = {"shape": list(x.shape), "max_abs": float(d.max()) if d.numel()
                            else 0.0, "mean_abs": float(d.mean()) if d.numel() else 0.0}
        return out


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "_.-" for c in name):
        raise RegistryError(f"model name must be letters, digits, '_', '.', '-', got {name!r}")


def _parse_manifest(name: str, version: int, text: str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise RegistryError(f"{name} v{version}: manifest is not JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise RegistryError(f"{name} v{version}: manifest format {manifest.get('format')!r} "
                            f"is not supported (expected {FORMAT})")
    return manifest


class MemoryBlobs:
    """An in-memory :class:`RegistryBlobs` (unit tests, doctests)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, int], tuple[bytes, str]] = {}
        self.label_docs: dict[str, str] = {}

    def names(self) -> list[str]:
        return sorted({n for n, _ in self.data} | set(self.label_docs))

    def versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self.data if n == name)

    def create(self, name: str, version: int, weights: bytes, manifest: str) -> bool:
        if (name, version) in self.data:
            return False
        self.data[(name, version)] = (weights, manifest)
        return True

    def read(self, name: str, version: int) -> tuple[bytes, str]:
        try:
            return self.data[(name, version)]
        except KeyError:
            raise RegistryError(f"{name} has no version {version}") from None

    def read_labels(self, name: str) -> str | None:
        return self.label_docs.get(name)

    def write_labels(self, name: str, text: str) -> None:
        self.label_docs[name] = text
