"""Batched, guarded writes to a Redis Cluster: one script call per master node and batch.

A single instance takes a batch's rows in one script call. On a cluster a script may only
*declare* keys of one hash slot, so declaring keys would mean one call per slot, i.e. per row
(16,384 slots, a batch of 1,000 keys). Instead the scripts carry the flag
``allow-cross-slot-keys`` and read their keys from ARGV: Redis (7.0+) then lets one call touch
keys of many slots as long as every one lives on the node that runs it, and fails the call
("non local key") otherwise. So the rows are grouped by the master that owns each key's slot
and every master gets one call, all masters at once (send all, then read all). This measured
best of the layouts tried (``bench/redis_cluster.py``, docs/benchmarks.md). Each key is still
written by one command inside one script call, so per key the write stays atomic.

Topology changes (a slot moved, ``MOVED``/``ASK``, a master died and its replica was promoted,
a node refused a write as ``READONLY``) show as an error on that node's call. The router then
re-reads the slot map and the caller re-packs *the same rows* for the new owners and sends
again; rows that had already been applied are applied again as an idempotent overwrite (the
event-time guard accepts an equal row), and nothing newer can have been written to those keys
meanwhile, because one lane writes its keys one batch at a time. So a key's writes are neither
lost nor reordered.

A master acknowledges before its replica has the write, and a replica promoted after a crash
may miss what was acknowledged last. With ``wait_replicas=n`` every call is followed by
``WAIT n timeout`` on the same connection: the batch counts as written only when ``n``
replicas have it, or when the master has fewer than ``n`` replicas connected at all (after a
failover, before the old master returns): then no replica exists to lose the write to, and
the write is accepted as degraded (counted) rather than stalling the pipeline.
"""

from __future__ import annotations

import binascii
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ClusterPlan", "ClusterRouter", "ClusterWriteError", "NodeCall", "slot_of"]

log = logging.getLogger(__name__)

SLOTS = 16384

#: Error replies that mean "this node no longer owns (all of) these keys": re-read the map.
_TOPOLOGY = (MovedError, AskError, ClusterDownError, TryAgainError, ReadOnlyError,
             MasterDownError)
_TOPOLOGY_TEXT = ("non local key", "not served", "cluster is down", "CLUSTERDOWN")


class ClusterWriteError(RedisError):
    """A batch could not be written to every master within the router's retries."""


@dataclass(frozen=True, slots=True)
class NodeCall:
    """One master's share of a batch: the packed script call and the row indices it holds."""

    node: str
    command: bytes
    rows: list[int]


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """A batch packed for the masters that own its keys now, and how to pack it again.

    ``pack(indices)`` builds one script call for those rows (all on one master); ``keys[i]``
    is row ``i``'s routing key.
    """

    calls: list[NodeCall]
    keys: Sequence[str]
    pack: Callable[[list[int]], bytes]


def slot_of(key: str) -> int:
    """Redis Cluster hash slot of ``key`` (CRC16 of the hash tag, or of the whole key)."""
    if "{" in key:
        return int(key_slot(key.encode()))
    return binascii.crc_hqx(key.encode(), 0) & (SLOTS - 1)


class ClusterRouter:
    """Which master owns which slot, and one pipelined script call per master."""

    def __init__(self, client: RedisCluster, *, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000, attempts: int = 150,
                 retry_sleep_s: float = 0.1) -> None:
        if wait_replicas < 0:
            raise ValueError(f"wait_replicas must be >= 0, got {wait_replicas}")
        self.client = client
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.attempts = attempts
        self.retry_sleep_s = retry_sleep_s
        self.degraded_writes = 0  # calls accepted with fewer replicas than asked (none left)
        self.topology_retries = 0
        self._cache_id = -1
        self._owner: list[str] = []
        self._topology_changed = False
        # Per master: (replicas connected, when checked). WAIT asks for at most that many, so
        # a master that lost its replica (after a failover) is not waited on for nothing.
        self._replicas: dict[str, tuple[int, float]] = {}

    # ---------------------------------------------------------------- slot map

    def owners(self) -> list[str]:
        """Master name (``host:port``) per slot, re-read when redis-py refreshed its map."""
        cache = self.client.nodes_manager.slots_cache
        if id(cache) != self._cache_id or len(self._owner) != SLOTS:
            self._owner = [cache[s][0].name if cache.get(s) else "" for s in range(SLOTS)]
            self._cache_id = id(cache)
        return self._owner

    def plan(self, keys: Sequence[str], pack: Callable[[list[int]], bytes],
             rows: Sequence[int] | None = None, max_rows: int = 5_000) -> ClusterPlan:
        """Group ``rows`` (default: all) by the master owning their key; ``max_rows`` a call."""
        owners = self.owners()
        groups: dict[str, list[int]] = {}
        for i in range(len(keys)) if rows is None else rows:
            groups.setdefault(owners[slot_of(keys[i])], []).append(i)
        calls = [NodeCall(node, pack(idx[lo:lo + max_rows]), idx[lo:lo + max_rows])
                 for node, idx in groups.items() for lo in range(0, len(idx), max_rows)]
        return ClusterPlan(calls, keys, pack)

    def execute(self, plan: ClusterPlan, script: str) -> list[tuple[list[int], Any]]:
        """Run ``plan``; the calls that fail on a topology change are re-planned on the new
        map and sent again until all succeeded. Returns ``(row indices, reply)`` per call."""
        done: list[tuple[list[int], Any]] = []
        calls = plan.calls
        for attempt in range(self.attempts):
            replies, failed = self.send(calls, script)
            retry: list[int] = []
            for call, reply in zip(calls, replies, strict=True):
                if reply is None:
                    retry += call.rows
                else:
                    done.append((call.rows, reply))
            if not retry:
                return done
            if self._topology_changed:  # else only NOSCRIPT: loaded, resend at once
                if attempt == 0:
                    log.info("Redis Cluster: %d rows for %s failed; re-reading the slot map "
                             "until they are written", len(retry), sorted(set(failed)))
                self.pause()
            calls = self.plan(plan.keys, plan.pack, sorted(retry)).calls
        raise ClusterWriteError(
            f"Redis Cluster write of {len(plan.keys)} rows still failing after "
            f"{self.attempts} attempts (nodes {sorted(set(failed))}); the caller retries")

    def refresh(self) -> None:
        """Re-read the topology from any reachable node (after a failover or a move)."""
        self.topology_retries += 1
        try:
            self.client.nodes_manager.initialize()
        except RedisError as exc:  # every seed busy or down: the next attempt tries again
            log.warning("Redis Cluster topology refresh failed: %s", exc)

    # ---------------------------------------------------------------- sending

    def send(self, calls: Sequence[NodeCall], script: str) -> tuple[list[Any], list[str]]:
        """Send every call to its master at once, then read the replies.

        Returns the replies of the calls that succeeded (``None`` for failed ones) and the
        names of the nodes whose call failed because of the topology (the caller re-packs
        those rows and sends them again). Raises on any other error.
        """
        pending: list[tuple[int, Any, Any, int]] = []
        failed: list[str] = []
        self._topology_changed = False
        replies: list[Any] = [None] * len(calls)
        for i, call in enumerate(calls):
            node = self.client.get_node(node_name=call.node) if call.node else None
            if node is None or node.redis_connection is None:
                failed.append(call.node)
                self._topology_changed = True
                continue
            pool = node.redis_connection.connection_pool
            try:
                conn = pool.get_connection()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                failed.append(call.node)
                self._topology_changed = True
                continue
            try:
                want = self._wait_for(call.node)
                conn.send_packed_command(
                    [call.command, _pack("WAIT", want, self.wait_timeout_ms)] if want
                    else [call.command])
            except (RedisConnectionError, RedisTimeoutError, OSError):
                conn.disconnect()
                pool.release(conn)
                failed.append(call.node)
                self._topology_changed = True
                continue
            pending.append((i, conn, pool, want))
        for i, conn, pool, want in pending:
            call = calls[i]
            try:
                reply, error = _read(conn)
                acked = None
                if want:
                    acked, _ = _read(conn)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                conn.disconnect()
                failed.append(call.node)
                self._topology_changed = True
                continue
            finally:
                pool.release(conn)
            if error is not None:
                if isinstance(error, NoScriptError):  # a promoted replica has no script cache
                    self._load(call.node, script)
                    failed.append(call.node)
                elif isinstance(error, _TOPOLOGY) or any(t in str(error)
                                                         for t in _TOPOLOGY_TEXT):
                    failed.append(call.node)
                    self._topology_changed = True
                else:
                    raise error
                continue
            if acked is not None and int(acked) < want:
                self._replicas.pop(call.node, None)
                if self._connected_replicas(call.node) >= want:
                    failed.append(call.node)  # a replica exists but lags: write again
                    self._topology_changed = True
                    continue
                self.degraded_writes += 1
            replies[i] = reply
        return replies, failed

    def _load(self, node_name: str, script: str) -> None:
        node = self.client.get_node(node_name=node_name)
        if node is not None and node.redis_connection is not None:
            node.redis_connection.script_load(script)

    def _wait_for(self, node_name: str) -> int:
        """Replicas to WAIT for on ``node_name``: the setting, capped by those connected
        (checked at most once a second; ``ROLE`` lists them)."""
        if self.wait_replicas == 0:
            return 0
        known = self._replicas.get(node_name)
        if known is None or time.monotonic() - known[1] > 1.0:
            try:
                count = self._connected_replicas(node_name)
            except RedisError:
                count = self.wait_replicas  # unknown: ask for all, the reply decides
            known = (count, time.monotonic())
            self._replicas[node_name] = known
        if known[0] < self.wait_replicas:
            self.degraded_writes += 1
        return min(self.wait_replicas, known[0])

    def _connected_replicas(self, node_name: str) -> int:
        node = self.client.get_node(node_name=node_name)
        if node is None or node.redis_connection is None:
            return 0
        role = node.redis_connection.execute_command("ROLE")
        return len(role[2]) if role and role[0] in (b"master", "master") else 0

    def pause(self) -> None:
        """Between attempts: let a failover progress, then re-read the map."""
        time.sleep(self.retry_sleep_s)
        self.refresh()


def _read(conn: Any) -> tuple[Any, ResponseError | None]:
    try:
        return conn.read_response(), None
    except ResponseError as exc:  # an error *reply*: the connection stays usable
        return None, exc


def _pack(*args: Any) -> bytes:
    import hiredis

    return bytes(hiredis.pack_command(args))
