"""Container health: has a streaminfer worker in this container reported metrics recently?

Workers publish ``metrics:{app}:{hostname}-{pid}`` to Redis every second with a 10 s expiry,
so the key exists only while the worker's event loop is alive *and* Redis answers. That is a
better signal than a port probe: a worker can hold its sockets open while its loop is stuck.
The hostname is the container's (the pod's in Kubernetes) and the pids are those visible in
the container, so exact keys are looked up (no SCAN over a keyspace full of predictions),
whatever the worker's pid (1, or not under an init) or app. Redis is found the way the worker
finds it (``STREAMINFER_REDIS_URL``, else ``REDIS_URL``, else the default).

Exit 0: healthy; 1: no fresh metrics key or Redis unreachable (Docker/Kubernetes semantics).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import get_args

import redis

from streaminfer.streams.settings import Settings, load_settings

APPS: tuple[str, ...] = get_args(Settings.model_fields["app"].annotation)


def candidate_keys(hostname: str, pids: list[int]) -> list[str]:
    """Every metrics key a worker process on this host could be writing."""
    return [f"metrics:{app}:{hostname}-{pid}" for app in APPS for pid in pids]


def visible_pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def fresh_keys(client: redis.Redis, keys: list[str]) -> list[str]:
    """The subset of ``keys`` that exist (have not expired)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [key for key, found in zip(keys, pipe.execute(), strict=True) if found]


def main() -> int:
    url = load_settings().redis_url
    host = socket.gethostname()
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        found = fresh_keys(client, candidate_keys(host, visible_pids()))
    except (redis.RedisError, OSError) as exc:
        print(f"unhealthy: Redis at {url} does not answer: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not found:
        print(f"unhealthy: no fresh metrics:<app>:{host}-<pid> key in Redis (worker starting, "
              "stuck, or unable to write to Redis)", file=sys.stderr)
        return 1
    print(f"healthy: {', '.join(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
