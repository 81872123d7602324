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

import ssl
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster

from streaminfer.errors import ConfigError
from streaminfer.redaction import redact

__all__ = ["CLUSTER_SCHEMES", "RedisClient", "check_credentials", "connect", "is_cluster",
           "is_cluster_url", "write_in_order"]

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


def check_credentials(url: str, timeout: float = 10.0) -> None:
    """Raise :class:`ConfigError` now if Redis refuses ``url``'s user, password or TLS.

    A worker retries failed Redis writes for ever, so that an outage never stops it; a wrong
    password, a user without permission or an untrusted certificate would then look like an
    endless outage. Those are not going to heal, so they stop the worker at start with a
    message that names the URL (password masked). A Redis that does not answer at all is left
    to the retries: it may be starting.
    """
    where = redact(url, [_password(url)])
    try:
        client = connect(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError,
            redis.exceptions.NoPermissionError) as exc:
        raise ConfigError(f"Redis at {where} refused the credentials: {exc} (check the user "
                          "and password in the Redis URL, and the user's ACL)") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        cause = _root_cause(exc)
        if isinstance(cause, ssl.SSLError):
            raise ConfigError(f"Redis at {where}: TLS failed: {cause} (rediss:// needs the "
                              "server's CA: ?ssl_ca_certs=/path/ca.pem)") from None
        if isinstance(cause, ConnectionResetError):
            raise ConfigError(f"Redis at {where} does not answer Redis commands: it closed "
                              "the connection at once (a TLS port reached with redis:// "
                              "instead of rediss://?)") from None


def _root_cause(exc: BaseException) -> BaseException:
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def _cluster_kwargs(url: str) -> dict[str, Any]:
    try:
        return _parse_cluster_url(url)
    except ConfigError as exc:  # the message quotes the URL: never its password
        raise ConfigError(redact(str(exc), [_password(url)])) from None


def _password(url: str) -> str:
    auth = url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]
    return unquote(auth.partition(":")[2] or auth)


def _parse_cluster_url(url: str) -> dict[str, Any]:
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
