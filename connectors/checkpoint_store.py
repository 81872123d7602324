"""Checkpoints in Redis, so a worker on another host can resume from the newest one.

Layout, per app: hash ``ckpt:{app}:{id}`` (fields ``state``: safetensors bytes, ``manifest``:
JSON) indexed by the sorted set ``ckpts:{app}`` (score ``created_ms``), written in one
MULTI/EXEC so a reader never sees one without the other (on a Redis Cluster, where the two keys
live in different slots: the hash first, then the index, so the index never names a missing
checkpoint; pruning removes the index entries first). :class:`RedisCheckpointBlobs` only
moves bytes; it is the ``CheckpointBlobs`` backend of ``models.checkpoint_store``'s
``BlobCheckpointStore``, which builds and reads the models. Mind Redis memory: prune.
"""

from __future__ import annotations

from typing import Any

from streaminfer.connectors.redis_client import RedisClient, write_in_order
from streaminfer.errors import CheckpointError

__all__ = ["RedisCheckpointBlobs"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCheckpointBlobs:
    """Hash ``{prefix}:{app}:{id}`` + sorted set ``{prefix}s:{app}`` by created_ms."""

    def __init__(self, client: RedisClient, prefix: str = "ckpt") -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError(
                "RedisCheckpointBlobs needs a client with decode_responses=False: "
                "tensor state is binary"
            )
        self.client, self.prefix = client, prefix

    def _key(self, app: str, ckpt_id: str) -> str:
        return f"{self.prefix}:{app}:{ckpt_id}"

    def _index(self, app: str) -> str:
        return f"{self.prefix}s:{app}"

    def put(self, app: str, ckpt_id: str, created_ms: int, state: bytes, manifest: str) -> str:
        key = self._key(app, ckpt_id)
        write_in_order(self.client, [  # MULTI/EXEC on one instance: all or nothing
            lambda p: p.hset(key, mapping={"state": state, "manifest": manifest}),
            lambda p: p.zadd(self._index(app), {ckpt_id: created_ms})])
        return key

    def index(self, app: str) -> list[tuple[str, int, str]]:
        rows = self.client.zrevrange(self._index(app), 0, -1, withscores=True)
        return [(_text(m), int(score), self._key(app, _text(m))) for m, score in rows]

    def exists(self, location: str) -> bool:
        return bool(self.client.exists(location))

    def get(self, app: str, location: str) -> tuple[bytes, bytes | str]:
        state, manifest = self.client.hmget(location, ["state", "manifest"])
        if state is None or manifest is None:
            raise CheckpointError(
                f"checkpoint {location} is missing from Redis or incomplete "
                f"(index {self._index(app)} names it; was it deleted or pruned?)"
            )
        return state, manifest

    def drop_oldest(self, app: str, keep: int) -> list[str]:
        index = self._index(app)
        doomed = [_text(m) for m in self.client.zrange(index, 0, -(keep + 1))]
        if doomed:
            keys = [self._key(app, d) for d in doomed]

            def delete(p: Any) -> None:  # one DEL per key: a cluster's keys span slots
                for k in keys:
                    p.delete(k)

            write_in_order(self.client, [lambda p: p.zrem(index, *doomed), delete])
        return doomed

    def __repr__(self) -> str:
        return f"RedisCheckpointBlobs({self.client!r}, prefix={self.prefix!r})"
