"""Where a worker keeps its checkpoints, so whoever owns a partition next can resume from them.

A checkpoint is the model's safetensors state plus a JSON manifest recording what those
parameters reflect::

    {"app": "classifier", "worker": "host-1", "id": "...", "created_ms": 1718000000000,
     "model": {"name", "version", "updates", "config", ...},      # rebuilds the model
     "offsets": {"<topic>": {"<partition>": next_offset}},        # input consumed so far
     "sync": {...},                                               # opaque, from models.sync
     ...any other JSON the caller adds (e.g. progressive metrics state)}

Weights and offsets are written together, so a restored worker seeks to ``offsets`` and never
learns from an event twice or skips one. Two stores share one interface:

* :class:`LocalCheckpointStore` - directories on a disk (``models.checkpoint``: build under a
  temporary name, rename into place), one sub-directory per app;
* :class:`BlobCheckpointStore` - each checkpoint as two blobs (safetensors state, JSON manifest)
  in a :class:`CheckpointBlobs` backend, so a worker on another host can take over a partition
  from the newest checkpoint. The Redis backend is ``connectors.checkpoint_store``'s
  ``RedisCheckpointBlobs``; this module stays pure torch and never imports a client library.

An S3-compatible store is not provided: there was no such server to test it against.
Tensors are only ever read with safetensors; nothing is pickled.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError

from streaminfer.errors import CheckpointError
from streaminfer.models import checkpoint
from streaminfer.models.base import Model
from streaminfer.models.weights import MAX_WEIGHTS_BYTES

__all__ = [
    "BlobCheckpointStore",
    "CheckpointBlobs",
    "CheckpointRef",
    "CheckpointStore",
    "LocalCheckpointStore",
]

_APP_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# The fields the store itself fills in; everything else in ``manifest_extra`` is kept as given.
_RESERVED = ("id", "created_ms", "model")


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    """Names one stored checkpoint without loading it: enough to order, load or show it.

    ``location`` is where it lives (a directory path or a Redis key), for error messages and
    for a human who wants to look at it.
    """

    app: str
    id: str
    created_ms: int
    location: str


def _check_app(app: str) -> str:
    if not isinstance(app, str) or not _APP_RE.match(app):
        raise ValueError(
            f"app must match {_APP_RE.pattern} (it names keys and directories), got {app!r}"
        )
    return app


def _offsets(value: Any) -> dict[str, dict[str, int]]:
    """``{topic: {partition: next_offset}}`` with string keys, as JSON will give it back."""
    if not isinstance(value, Mapping):
        raise ValueError(f"offsets must map topic -> {{partition: next_offset}}, got {value!r}")
    out: dict[str, dict[str, int]] = {}
    for topic, parts in value.items():
        if not isinstance(parts, Mapping):
            raise ValueError(f"offsets[{topic!r}] must map partition -> next_offset, got {parts!r}")
        out[str(topic)] = {}
        for partition, offset in parts.items():
            if not str(partition).isdigit():
                raise ValueError(f"offsets[{topic!r}] has partition {partition!r}, not an int >= 0")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(
                    f"offsets[{topic!r}][{partition!r}] must be an int >= 0, got {offset!r}"
                )
            out[str(topic)][str(int(partition))] = offset
    return out


class CheckpointStore(ABC):
    """Save, find the newest, load and prune checkpoints of one or more apps."""

    def __init__(self, *, max_bytes: int = MAX_WEIGHTS_BYTES) -> None:
        self._last_ms = 0
        self.max_bytes = max_bytes  # a checkpoint's weights over this are refused unread

    def _created_ms(self) -> int:
        """Wall-clock milliseconds, strictly increasing within this store (newest always wins)."""
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return self._last_ms

    def _extra(self, model: Model, manifest_extra: Mapping[str, Any] | None) -> dict[str, Any]:
        extra = dict(manifest_extra or {})
        clash = sorted(k for k in _RESERVED if k in extra)
        if clash:
            raise ValueError(f"manifest_extra must not set {clash}: the store fills them in")
        created_ms = self._created_ms()
        app = _check_app(extra.get("app") or model.name)
        return {
            **extra,
            "app": app,
            "worker": str(extra.get("worker", "")),
            "offsets": _offsets(extra.get("offsets", {})),
            "sync": extra.get("sync", {}),
            "created_ms": created_ms,
        }

    @abstractmethod
    def save(self, model: Model, manifest_extra: Mapping[str, Any] | None = None) -> CheckpointRef:
        """Store ``model`` with ``manifest_extra`` (``app``, ``worker``, ``offsets``, ``sync``...).

        ``app`` defaults to the model's name. Returns the new checkpoint's reference.
        """

    @abstractmethod
    def refs(self, app: str) -> list[CheckpointRef]:
        """The checkpoints of ``app``, newest first."""

    def latest(self, app: str) -> CheckpointRef | None:
        """The newest checkpoint of ``app``, or ``None`` if it has none."""
        found = self.refs(app)
        return found[0] if found else None

    @abstractmethod
    def load(
        self, ref: CheckpointRef, device: str | torch.device = "auto", into: Model | None = None
    ) -> tuple[Model, dict[str, Any]]:
        """``(model, manifest)`` of ``ref``; raises :class:`CheckpointError` if unreadable.

        ``into``: load the weights into this model (an app's own) rather than rebuilding a
        built-in model from the manifest.
        """

    @abstractmethod
    def prune(self, app: str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` checkpoints of ``app``; returns the removed ids."""


def _store_manifest(ckpt_manifest: dict[str, Any]) -> dict[str, Any]:
    """A ``models.checkpoint`` manifest reshaped so the store's fields sit at the top level."""
    extra = dict(ckpt_manifest.get("extra") or {})
    model = {k: v for k, v in ckpt_manifest.items() if k != "extra"}
    return {"worker": "", "offsets": {}, "sync": {}, **extra, "model": model}


def _check_keep(keep: int) -> None:
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints as directories ``root/<app>/<name>-<time>-u<updates>/`` on a local disk."""

    def __init__(self, root: str | Path, *, max_bytes: int = MAX_WEIGHTS_BYTES) -> None:
        super().__init__(max_bytes=max_bytes)
        self.root = Path(root)

    def save(self, model: Model, manifest_extra: Mapping[str, Any] | None = None) -> CheckpointRef:
        extra = self._extra(model, manifest_extra)
        path = checkpoint.save(model, self.root / extra["app"], extra)
        return CheckpointRef(extra["app"], path.name, extra["created_ms"], str(path))

    def refs(self, app: str) -> list[CheckpointRef]:
        found = []
        for path in reversed(checkpoint.checkpoints(self.root / _check_app(app))):
            manifest = checkpoint.read_manifest(path)
            created_ms = manifest.get("extra", {}).get("created_ms")
            if created_ms is None:  # written by models.checkpoint.save directly
                created_ms = int(float(manifest.get("created_unix", 0.0)) * 1000)
            found.append(CheckpointRef(app, path.name, int(created_ms), str(path)))
        return found

    def load(
        self, ref: CheckpointRef, device: str | torch.device = "auto", into: Model | None = None
    ) -> tuple[Model, dict[str, Any]]:
        try:
            model, manifest = checkpoint.load(ref.location, device=device, into=into,
                                              max_bytes=self.max_bytes)
        except (OSError, ValueError, KeyError, SafetensorError, CheckpointError) as exc:
            raise CheckpointError(f"checkpoint {ref.location} cannot be loaded: {exc}") from exc
        return model, {"app": ref.app, **_store_manifest(manifest), "id": Path(ref.location).name}

    def prune(self, app: str, keep: int) -> list[str]:
        _check_keep(keep)
        return [p.name for p in checkpoint.prune(self.root / _check_app(app), keep)]

    def __repr__(self) -> str:
        return f"LocalCheckpointStore({str(self.root)!r})"


class CheckpointBlobs(Protocol):
    """Byte-level storage of checkpoints, per app: what a remote backend must offer.

    The backend only moves bytes; building and reading models stays in
    :class:`BlobCheckpointStore`, so a backend needs no torch and this module no client library.
    ``location`` is the backend's name for one checkpoint (e.g. a Redis key).
    """

    def put(self, app: str, ckpt_id: str, created_ms: int, state: bytes, manifest: str) -> str:
        """Write both blobs and index them, all or nothing; returns the location."""
        ...

    def index(self, app: str) -> list[tuple[str, int, str]]:
        """``(id, created_ms, location)`` of every indexed checkpoint of ``app``, newest first."""
        ...

    def exists(self, location: str) -> bool:
        """Whether the blobs at ``location`` are still there (an index entry can dangle)."""
        ...

    def get(self, app: str, location: str) -> tuple[bytes, bytes | str]:
        """``(state, manifest)``; raises :class:`CheckpointError` when missing or incomplete."""
        ...

    def drop_oldest(self, app: str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` checkpoints of ``app``; returns the removed ids."""
        ...


class BlobCheckpointStore(CheckpointStore):
    """Checkpoints as (safetensors bytes, JSON manifest) pairs in a :class:`CheckpointBlobs`.

    Every host that can reach the backend sees the same newest checkpoint, which is what a
    worker taking over a partition after a rebalance needs.
    """

    def __init__(self, blobs: CheckpointBlobs, *, max_bytes: int = MAX_WEIGHTS_BYTES) -> None:
        super().__init__(max_bytes=max_bytes)
        self.blobs = blobs

    def save(self, model: Model, manifest_extra: Mapping[str, Any] | None = None) -> CheckpointRef:
        extra = self._extra(model, manifest_extra)
        extra["id"] = f"{extra['created_ms']:013d}-u{model.version.updates}-{secrets.token_hex(3)}"
        ckpt_manifest, state = checkpoint.save_bytes(model, extra)
        manifest_text = json.dumps(_store_manifest(ckpt_manifest), sort_keys=True)
        app, ckpt_id, created_ms = extra["app"], extra["id"], extra["created_ms"]
        location = self.blobs.put(app, ckpt_id, created_ms, state, manifest_text)
        return CheckpointRef(app, ckpt_id, created_ms, location)

    def refs(self, app: str) -> list[CheckpointRef]:
        rows = self.blobs.index(_check_app(app))
        return [CheckpointRef(app, ckpt_id, created_ms, loc) for ckpt_id, created_ms, loc in rows]

    def latest(self, app: str) -> CheckpointRef | None:
        """The newest checkpoint of ``app`` whose blobs still exist (index entries can dangle)."""
        for ref in self.refs(app):
            if self.blobs.exists(ref.location):
                return ref
        return None

    def load(
        self, ref: CheckpointRef, device: str | torch.device = "auto", into: Model | None = None
    ) -> tuple[Model, dict[str, Any]]:
        state, manifest_text = self.blobs.get(_check_app(ref.app), ref.location)
        try:
            manifest = json.loads(manifest_text)
            model = checkpoint.load_bytes(manifest["model"], state, device=device, into=into,
                                          max_bytes=self.max_bytes)
        except (ValueError, KeyError, TypeError, SafetensorError, CheckpointError) as exc:
            raise CheckpointError(f"checkpoint {ref.location} cannot be loaded: {exc}") from exc
        return model, manifest

    def prune(self, app: str, keep: int) -> list[str]:
        _check_keep(keep)
        return self.blobs.drop_oldest(_check_app(app), keep)

    def __repr__(self) -> str:
        return f"BlobCheckpointStore({self.blobs!r})"
