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
* :class:`RedisCheckpointStore` - ``ckpt:{app}:{id}`` hashes (``state``, ``manifest``) indexed by
  the sorted set ``ckpts:{app}`` (score ``created_ms``), written in one MULTI/EXEC, so a worker
  on another host can take over a partition from the newest checkpoint.

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
from typing import Any
from urllib.parse import unquote, urlparse

import redis
import torch
from safetensors import SafetensorError

from streaminfer.models import checkpoint
from streaminfer.models.base import Model

__all__ = [
    "CheckpointError",
    "CheckpointRef",
    "CheckpointStore",
    "LocalCheckpointStore",
    "RedisCheckpointStore",
    "store_from_url",
]

_APP_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# The fields the store itself fills in; everything else in ``manifest_extra`` is kept as given.
_RESERVED = ("id", "created_ms", "model")


class CheckpointError(Exception):
    """A checkpoint that a store lists (or a caller names) cannot be read back."""


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

    def __init__(self) -> None:
        self._last_ms = 0

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
        self, ref: CheckpointRef, device: str | torch.device = "auto"
    ) -> tuple[Model, dict[str, Any]]:
        """``(model, manifest)`` of ``ref``; raises :class:`CheckpointError` if unreadable."""

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

    def __init__(self, root: str | Path) -> None:
        super().__init__()
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
        self, ref: CheckpointRef, device: str | torch.device = "auto"
    ) -> tuple[Model, dict[str, Any]]:
        try:
            model, manifest = checkpoint.load(ref.location, device=device)
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise CheckpointError(f"checkpoint {ref.location} cannot be loaded: {exc}") from exc
        return model, {"app": ref.app, **_store_manifest(manifest), "id": Path(ref.location).name}

    def prune(self, app: str, keep: int) -> list[str]:
        _check_keep(keep)
        return [p.name for p in checkpoint.prune(self.root / _check_app(app), keep)]

    def __repr__(self) -> str:
        return f"LocalCheckpointStore({str(self.root)!r})"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCheckpointStore(CheckpointStore):
    """Checkpoints in Redis: hash ``ckpt:{app}:{id}`` + sorted set ``ckpts:{app}`` by created_ms.

    Every host that can reach the Redis server sees the same newest checkpoint, which is what
    a worker taking over a partition after a rebalance needs. Mind Redis memory: prune.
    """

    def __init__(self, client: redis.Redis, prefix: str = "ckpt") -> None:
        super().__init__()
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError(
                "RedisCheckpointStore needs a client with decode_responses=False: "
                "tensor state is binary"
            )
        self.client, self.prefix = client, prefix

    def _key(self, app: str, ckpt_id: str) -> str:
        return f"{self.prefix}:{app}:{ckpt_id}"

    def _index(self, app: str) -> str:
        return f"{self.prefix}s:{_check_app(app)}"

    def save(self, model: Model, manifest_extra: Mapping[str, Any] | None = None) -> CheckpointRef:
        extra = self._extra(model, manifest_extra)
        extra["id"] = f"{extra['created_ms']:013d}-u{model.version.updates}-{secrets.token_hex(3)}"
        ckpt_manifest, state = checkpoint.save_bytes(model, extra)
        manifest_text = json.dumps(_store_manifest(ckpt_manifest), sort_keys=True)
        app, ckpt_id, created_ms = extra["app"], extra["id"], extra["created_ms"]
        key = self._key(app, ckpt_id)
        with self.client.pipeline(transaction=True) as pipe:  # MULTI/EXEC: all or nothing
            pipe.hset(key, mapping={"state": state, "manifest": manifest_text})
            pipe.zadd(self._index(app), {ckpt_id: created_ms})
            pipe.execute()
        return CheckpointRef(app, ckpt_id, created_ms, key)

    def refs(self, app: str) -> list[CheckpointRef]:
        rows = self.client.zrevrange(self._index(app), 0, -1, withscores=True)
        return [
            CheckpointRef(app, _text(m), int(score), self._key(app, _text(m))) for m, score in rows
        ]

    def latest(self, app: str) -> CheckpointRef | None:
        """The newest checkpoint of ``app`` whose hash still exists (index entries can dangle)."""
        for ref in self.refs(app):
            if self.client.exists(ref.location):
                return ref
        return None

    def load(
        self, ref: CheckpointRef, device: str | torch.device = "auto"
    ) -> tuple[Model, dict[str, Any]]:
        state, manifest_text = self.client.hmget(ref.location, ["state", "manifest"])
        if state is None or manifest_text is None:
            raise CheckpointError(
                f"checkpoint {ref.location} is missing from Redis or incomplete "
                f"(index {self._index(ref.app)} names it; was it deleted or pruned?)"
            )
        try:
            manifest = json.loads(manifest_text)
            model = checkpoint.load_bytes(manifest["model"], state, device=device)
        except (ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise CheckpointError(f"checkpoint {ref.location} cannot be loaded: {exc}") from exc
        return model, manifest

    def prune(self, app: str, keep: int) -> list[str]:
        _check_keep(keep)
        index = self._index(app)
        doomed = [_text(m) for m in self.client.zrange(index, 0, -(keep + 1))]
        if doomed:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*(self._key(app, d) for d in doomed))
                pipe.zrem(index, *doomed)
                pipe.execute()
        return doomed

    def __repr__(self) -> str:
        return f"RedisCheckpointStore({self.client!r}, prefix={self.prefix!r})"


def store_from_url(url: str | Path) -> CheckpointStore:
    """The store a URL names: ``/path`` or ``file:///path`` (disk), ``redis://...`` (Redis)."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisCheckpointStore(redis.Redis.from_url(text))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URLs must name a local path (file:///path), got {text!r}")
        return LocalCheckpointStore(unquote(parsed.path))
    if parsed.scheme == "s3":
        raise ValueError(
            f"S3 checkpoint stores are not supported (got {text!r}); use file:// or redis://"
        )
    if "://" in text:
        raise ValueError(f"checkpoint store URL must be a path, file:// or redis://, got {text!r}")
    return LocalCheckpointStore(text)
