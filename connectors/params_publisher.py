"""Publish the live parameters to Redis for readers outside the pipeline (dashboards, batch jobs).

Keys, per app::

    params:{app}:{version}   hash: state = safetensors bytes, manifest = JSON
                             (name, version, updates, config, created_ms, worker)
    params:{app}:latest      string: the version last published

Both expire after ``ttl_s`` (default 1 h), so parameters of a stopped worker do not linger and
the pointer never outlives what it points at. Publishing the whole state costs a serialisation
and a network write, so :meth:`ParamsPublisher.maybe_publish`, called between batches, does it
at most every ``every_s`` seconds; an unchanged version only has its TTL refreshed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from streaminfer.connectors.redis_client import RedisClient, write_in_order

__all__ = ["ParamsPublisher", "PublishableModel", "read_params", "read_params_manifest"]


class _Version(Protocol):
    @property
    def updates(self) -> int: ...


class PublishableModel(Protocol):
    """What publishing reads of a model; ``models.base.Model`` has it (connectors import no
    models, so the layers point one way)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> _Version: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def config(self) -> dict[str, Any]: ...


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(prefix: str, app: str, version: str) -> str:
    return f"{prefix}:{app}:{version}"


class ParamsPublisher:
    """Rate-limited writer of ``params:{app}:{version}`` and the ``params:{app}:latest`` pointer."""

    def __init__(
        self,
        client: RedisClient,
        app: str,
        *,
        every_s: float = 10.0,
        ttl_s: int = 3600,
        worker: str = "",
        prefix: str = "params",
        keep: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1 second, got {ttl_s}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        if not app or ":" in app:
            raise ValueError(f"app must be non-empty and contain no ':', got {app!r}")
        self.client, self.app, self.worker, self.prefix = client, app, worker, prefix
        self.every_s, self.ttl_s, self._clock = every_s, ttl_s, clock
        self._last_at: float | None = None
        self._last_version: str | None = None

    def maybe_publish(self, model: PublishableModel) -> str | None:
        """Publish if ``every_s`` has passed since the last time; returns the version written.

        ``None`` means nothing new was written (too soon, or the version is unchanged, in
        which case the keys' TTL is refreshed so readers keep seeing them).
        """
        now = self._clock()
        if self._last_at is not None and now - self._last_at < self.every_s:
            return None
        self._last_at = now
        version = str(model.version)
        if version == self._last_version:
            write_in_order(self.client, [
                lambda p: p.expire(_key(self.prefix, self.app, version), self.ttl_s),
                lambda p: p.expire(_key(self.prefix, self.app, "latest"), self.ttl_s)])
            return None
        return self.publish(model)

    def publish(self, model: PublishableModel) -> str:
        """Write the parameters now, whatever the rate limit; returns the version string."""
        version = str(model.version)
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        manifest = {
            "app": self.app,
            "name": model.name,
            "version": version,
            "updates": model.version.updates,
            "config": model.config(),
            "created_ms": int(time.time() * 1000),
            "worker": self.worker,
        }
        key = _key(self.prefix, self.app, version)
        index = _key(self.prefix, self.app, "versions")
        state = safetensors_save(tensors)

        def index_steps(p: Any) -> None:
            p.lrem(index, 0, version)
            p.lpush(index, version)
            p.lrange(index, self.keep, -1)
            p.ltrim(index, 0, self.keep - 1)
            p.expire(index, self.ttl_s)

        # One transaction on a single instance (readers never see half of it); on a cluster
        # the parameters first, then the pointer to them, then the index.
        dropped = write_in_order(self.client, [
            lambda p: p.hset(key, mapping={"state": state, "manifest": json.dumps(manifest)}),
            lambda p: p.expire(key, self.ttl_s),
            lambda p: p.set(_key(self.prefix, self.app, "latest"), version, ex=self.ttl_s),
            index_steps,
        ])[-3]
        # Only the newest ``keep`` versions stay: a big model published every few seconds
        # would otherwise fill Redis until the TTLs run out.
        stale = [_key(self.prefix, self.app, _text(v)) for v in dropped if _text(v) != version]
        if stale:
            self.client.delete(*stale)
        self._last_version = version
        if self._last_at is None:
            self._last_at = self._clock()
        return version


def _resolve(client: RedisClient, app: str, version: str, prefix: str) -> str:
    if version != "latest":
        return version
    pointer = client.get(_key(prefix, app, "latest"))
    if pointer is None:
        raise LookupError(
            f"no parameters published for app {app!r}: "
            f"{_key(prefix, app, 'latest')} is absent or expired"
        )
    return _text(pointer)


def _field(client: RedisClient, app: str, version: str, prefix: str, field: str) -> bytes:
    key = _key(prefix, app, _resolve(client, app, version, prefix))
    value = client.hget(key, field)
    if value is None:
        raise LookupError(f"{key} has no {field!r}: never published, or expired")
    return value if isinstance(value, bytes) else value.encode()


def read_params(
    client: RedisClient, app: str, version: str = "latest", *, prefix: str = "params"
) -> dict[str, torch.Tensor]:
    """The published tensors of ``app`` at ``version`` (``"latest"``, or e.g. ``"v1+u42"``).

    ``client`` must return bytes (``decode_responses=False``). Raises ``LookupError`` when
    nothing is published (or it expired).
    """
    return safetensors_load(_field(client, app, version, prefix, "state"))


def read_params_manifest(
    client: RedisClient, app: str, version: str = "latest", *, prefix: str = "params"
) -> dict[str, Any]:
    """What :func:`read_params` returns describes: version, updates, config, worker, time."""
    return json.loads(_field(client, app, version, prefix, "manifest"))
