"""Guarded prediction writes: one Redis against a 3-master Redis Cluster, layout by layout.

Why: on a cluster a script may only declare keys of one hash slot, so the single-instance
layout (all of a batch's keys in one script call) does not carry over. This measures, in one
run, the write rate and the Redis server CPU per row (``INFO CPU`` of every master, before and
after) of:

* ``single``        the sink on one redis-server: one script call per batch (the baseline)
* ``per-master``    the sink on the cluster: one ``allow-cross-slot-keys`` script call per
                    master and batch, all masters at once (the layout streaminfer uses)
* ``per-master+wait`` the same followed by ``WAIT 1`` (each batch on a replica before it
                    counts; streaminfer's default on a cluster)
* ``per-slot``      one script call per hash slot with declared keys, pipelined per master
                    (with 16,384 slots, about one call per row)
* ``fcall-per-key`` Redis Functions: one ``FCALL`` per row, pipelined per master
* ``hash-tags``     keys tagged so that a master's share shares one slot, one plain script
                    call per master (needs a different key layout: measured, not used)

All nodes of the local cluster share the same 2 cores as the client, so the cluster's rate
here says little about a real multi-host cluster; the server CPU per row says what each layout
costs Redis. Usage::

    streaminfer dev up --redis-cluster
    python bench/redis_cluster.py --single redis://127.0.0.1:6379/15 \\
        --cluster redis+cluster://127.0.0.1:17001 --batches 100 --batch 1000

Keys ``pred:rcbench:*`` (and ``pred:rcbench:{tag}:*``) are deleted before each layout.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import docs_footer, markdown_table, start_run, write_docs_section
from streaminfer.connectors.prediction import Predictions
from streaminfer.connectors.redis_client import connect
from streaminfer.connectors.redis_cluster_write import slot_of
from streaminfer.connectors.redis_sink import (
    _LUA_NEWER,
    _PREDICTION_LUA,
    RedisPredictionSink,
)

APP = "rcbench"

_FUNCTION_LIB = "#!lua name=rcbench\n" + _LUA_NEWER + """
redis.register_function('rcbench_write', function(keys, argv)
  local key = keys[1]
  if not newer(key, argv[6], argv[5]) then return 0 end
  redis.call('HSET', key, 'event_id', argv[5], 'event_ts', argv[6], 'processed_ts', argv[1],
    'model_name', argv[2], 'model_version', argv[3], argv[4], argv[7])
  return 1
end)
"""


def _batches(count: int, size: int, keys: int) -> list[Predictions]:
    out = []
    for b in range(count):
        idx = [(b * size + i) % keys for i in range(size)]
        out.append(Predictions(
            keys=[f"u{i}" for i in idx], event_ids=[f"e{b:05d}-{i}" for i in range(size)],
            event_ts=[1_700_000_000_000 + b * size + i for i in range(size)],
            processed_ts=1_700_000_000_000, model_name="m", model_version="v1+u0",
            outputs={"score": [0.5] * size}))
    return out


def _cpu(nodes: list[Any]) -> float:
    total = 0.0
    for node in nodes:
        info = node.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def _masters(client: Any) -> list[Any]:
    if hasattr(client, "get_primaries"):
        return [n.redis_connection for n in client.get_primaries()]
    return [client]


def _clean(client: Any) -> None:
    for node in _masters(client):
        pipe = node.pipeline(transaction=False)
        for key in node.scan_iter(f"pred:{APP}:*", count=5000):
            pipe.delete(key)  # one key a command: a cluster node refuses cross-slot DELs
        pipe.execute()


def _per_master_pipeline(client: Any, commands: dict[str, list[bytes]]) -> None:
    """Send each master its commands in one pipeline, all masters at once, read all."""
    pending = []
    for name, cmds in commands.items():
        pool = client.get_node(node_name=name).redis_connection.connection_pool
        conn = pool.get_connection()
        conn.send_packed_command(cmds)
        pending.append((conn, pool, len(cmds)))
    for conn, pool, n in pending:
        try:
            for _ in range(n):
                conn.read_response()
        finally:
            pool.release(conn)


def _owner(client: Any) -> list[str]:
    cache = client.nodes_manager.slots_cache
    return [cache[s][0].name for s in range(16384)]


def _per_slot(client: Any) -> Callable[[Predictions], None]:
    sha = client.get_primaries()[0].redis_connection.script_load(_PREDICTION_LUA)
    for node in client.get_primaries():
        node.redis_connection.script_load(_PREDICTION_LUA)
    owner = _owner(client)

    def write(batch: Predictions) -> None:
        by_slot: dict[int, list[int]] = {}
        keys = [f"pred:{APP}:{k}" for k in batch.keys]
        for i, key in enumerate(keys):
            by_slot.setdefault(slot_of(key), []).append(i)
        commands: dict[str, list[bytes]] = {}
        for slot, idx in by_slot.items():
            args: list[Any] = ["EVALSHA", sha, len(idx), *(keys[i] for i in idx), 0,
                               batch.processed_ts, batch.model_name, batch.model_version, 1,
                               "score", 0]  # one output field, no shared ones
            for i in idx:
                args += [batch.event_ids[i], batch.event_ts[i], batch.outputs["score"][i]]
            commands.setdefault(owner[slot], []).append(hiredis.pack_command(tuple(args)))
        _per_master_pipeline(client, commands)

    return write


def _fcall(client: Any) -> Callable[[Predictions], None]:
    for node in client.get_primaries():
        node.redis_connection.execute_command("FUNCTION", "LOAD", "REPLACE", _FUNCTION_LIB)
    owner = _owner(client)

    def write(batch: Predictions) -> None:
        commands: dict[str, list[bytes]] = {}
        for i, k in enumerate(batch.keys):
            key = f"pred:{APP}:{k}"
            commands.setdefault(owner[slot_of(key)], []).append(hiredis.pack_command((
                "FCALL", "rcbench_write", 1, key, batch.processed_ts, batch.model_name,
                batch.model_version, "score", batch.event_ids[i], batch.event_ts[i],
                batch.outputs["score"][i])))
        _per_master_pipeline(client, commands)

    return write


def _hash_tags(client: Any) -> Callable[[Predictions], None]:
    """Keys ``pred:rcbench:{tN}:key`` with one tag per master: a master's share of the batch
    shares one slot, so the single-instance script (declared keys) runs once per master."""
    masters = [n.name for n in client.get_primaries()]
    owner = _owner(client)
    tag_of: dict[str, str] = {}
    t = 0
    while len(tag_of) < len(masters):
        tag = f"t{t}"
        tag_of.setdefault(owner[slot_of("{" + tag + "}")], tag)
        t += 1
    sha = hashlib.sha1(_PREDICTION_LUA.encode()).hexdigest()
    for node in client.get_primaries():
        node.redis_connection.script_load(_PREDICTION_LUA)
    names = list(tag_of)

    def write(batch: Predictions) -> None:
        groups: dict[str, list[int]] = {}
        for i, k in enumerate(batch.keys):
            groups.setdefault(names[hash(k) % len(names)], []).append(i)
        commands = {}
        for name, idx in groups.items():
            tag = tag_of[name]
            args: list[Any] = ["EVALSHA", sha, len(idx),
                               *(f"pred:{APP}:{{{tag}}}:{batch.keys[i]}" for i in idx), 0,
                               batch.processed_ts, batch.model_name, batch.model_version, 1,
                               "score", 0]  # one output field, no shared ones
            for i in idx:
                args += [batch.event_ids[i], batch.event_ts[i], batch.outputs["score"][i]]
            commands[name] = [hiredis.pack_command(tuple(args))]
        _per_master_pipeline(client, commands)

    return write


def _sink(client: Any, wait: int | None) -> Callable[[Predictions], None]:
    sink = RedisPredictionSink(client, APP, wait_replicas=wait)

    def write(batch: Predictions) -> None:
        sink.write_packed(sink.pack_columns(batch))

    return write


def measure(client: Any, write: Callable[[Predictions], None],
            batches: list[Predictions]) -> tuple[float, float]:
    """(rows/s, server CPU microseconds per row, summed over the masters)."""
    _clean(client)
    write(batches[0])  # scripts loaded, connections open
    masters = _masters(client)
    cpu0, t0 = _cpu(masters), time.perf_counter()
    for batch in batches:
        write(batch)
    elapsed, cpu = time.perf_counter() - t0, _cpu(masters) - cpu0
    rows = sum(len(b) for b in batches)
    return rows / elapsed, cpu / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", default="redis://127.0.0.1:6379/15",
                        help="the single Redis to compare with [%(default)s]")
    parser.add_argument("--cluster", default="redis+cluster://127.0.0.1:17001",
                        help="a node of the 3-master cluster [%(default)s]")
    parser.add_argument("--batches", type=int, default=100, help="batches per layout")
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch")
    parser.add_argument("--keys", type=int, default=20_000, help="distinct keys written")
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite the redis-cluster section of docs/benchmarks.md")
    args = parser.parse_args()
    load = start_run()
    batches = _batches(args.batches, args.batch, args.keys)
    single, cluster = connect(args.single), connect(args.cluster)
    layouts: list[tuple[str, Any, Callable[[], Callable[[Predictions], None]]]] = [
        ("single (1 instance, 1 call per batch)", single, lambda: _sink(single, None)),
        ("per-master (used)", cluster, lambda: _sink(cluster, 0)),
        ("per-master + WAIT 1 (default on a cluster)", cluster, lambda: _sink(cluster, 1)),
        ("per-slot EVALSHA, pipelined", cluster, lambda: _per_slot(cluster)),
        ("FCALL per key, pipelined", cluster, lambda: _fcall(cluster)),
        ("hash tags, 1 call per master (other key layout)", cluster,
         lambda: _hash_tags(cluster)),
    ]
    rows = []
    base = None
    for name, client, make in layouts:
        rate, cpu = measure(client, make(), batches)
        base = base or rate
        rows.append((name, f"{rate:,.0f}", f"{rate / base:.2f}x", f"{cpu:.1f}"))
        print(f"{name:50s} {rate:10,.0f} rows/s  {rate / base:5.2f}x  {cpu:6.1f} us CPU/row",
              flush=True)
    for client in (single, cluster):
        _clean(client)
    table = markdown_table(["layout", "rows/s", "vs single", "Redis CPU us/row (all masters)"],
                           rows)
    if args.write_docs:
        write_docs_section("redis-cluster", f"""## Redis Cluster: write layouts

{args.batches} batches of {args.batch} guarded prediction rows over {args.keys:,} keys, one
writer thread, each layout after the other in one run. The cluster is 3 masters + 3 replicas
on the **same 2 cores** as the writer and the single Redis: its rate here is no forecast for a
multi-host cluster (there, each master has its own core and the rate adds up); the server CPU
per row is what each layout costs Redis wherever it runs. The cluster's masters also feed
their replicas (the single instance has none), which is part of its higher CPU per row.

{table}

{docs_footer(load)}
""")


if __name__ == "__main__":
    main()
