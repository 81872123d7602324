"""The one place streaminfer turns a Redis URL into a client: a single instance or a Redis Cluster.

``redis://`` / ``rediss://`` / ``unix://`` give a ``redis.Redis``; ``redis+cluster://h1:p1,h2:p2``
(``rediss+cluster://`` for TLS) gives a ``redis.RedisCluster`` seeded with those nodes (any
reachable one is enough: the client reads the rest of the topology from it). Key layouts are
the same on both, so a reader needs only a cluster client. A cluster has one database, so a
path other than ``/`` or ``/0`` is refused rather than ignored.

Multi-key MULTI/EXEC only works inside one hash slot on a cluster, and streaminfer's keys of
one write (a checkpoint and its index, parameters and their ``latest`` pointer) live in
different slots. :func:`write_in_order` therefore runs the steps of such a write as one
transaction on a single instance, and one after the other on a cluster, data before the
pointers that name it, so a reader never follows a pointer to nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster

from streaminfer.errors import ConfigError

__all__ = ["CLUSTER_SCHEMES", "RedisClient", "connect", "is_cluster", "is_cluster_url",
           "write_in_order"]

#: URL schemes that name a Redis Cluster (seed nodes, comma separated).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

RedisClient = redis.Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def connect(url: str, **kwargs: Any) -> RedisClient:
    """A client for ``url``; ``kwargs`` go to the redis-py constructor (timeouts, ...)."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **kwargs)
    return RedisCluster(**_cluster_kwargs(url), **kwargs)


def _cluster_kwargs(url: str) -> dict[str, Any]:
    scheme, rest = url.split("://", 1)
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if path not in ("", "0"):
        raise ConfigError(f"Redis URL {url!r}: a Redis Cluster has only database 0, got "
                          f"/{path}")
    auth, _, hosts = netloc.rpartition("@")
    nodes = []
    for part in hosts.split(","):
        parsed = urlparse(f"//{part.strip()}")
        if not parsed.hostname:
            raise ConfigError(f"Redis URL {url!r}: {part!r} is not host:port")
        nodes.append(ClusterNode(parsed.hostname, parsed.port or 6379))
    out: dict[str, Any] = {"startup_nodes": nodes}
    if auth:
        user, sep, password = auth.partition(":")
        if sep:
            out["username"] = unquote(user) or None
            out["password"] = unquote(password)
        else:
            out["password"] = unquote(user)
    if scheme == "rediss+cluster":
        out["ssl"] = True
    for key, value in parse_qsl(query):
        if key in ("socket_timeout", "socket_connect_timeout"):
            out[key] = float(value)
        else:
            raise ConfigError(f"Redis URL {url!r}: unsupported option {key!r} for a cluster "
                              "(socket_timeout, socket_connect_timeout)")
    return out


def write_in_order(client: RedisClient, steps: Sequence[Callable[[Any], None]]) -> list[Any]:
    """Run ``steps`` (each queues commands on a pipeline) and return all replies in order.

    One MULTI/EXEC on a single instance: all or nothing. On a cluster each step is its own
    pipeline, sent only after the previous one was acknowledged: put data first, pointers
    last, so a crash in between leaves unreferenced data, never a dangling pointer.
    """
    if not is_cluster(client):
        with client.pipeline(transaction=True) as pipe:
            for step in steps:
                step(pipe)
            return list(pipe.execute())
    replies: list[Any] = []
    for step in steps:
        with client.pipeline(transaction=False) as pipe:
            step(pipe)
            replies += pipe.execute()
    return replies
