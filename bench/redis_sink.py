"""Redis write strategies for prediction batches, side by side on a real redis-server.

Why: the sink must be idempotent under replays and out-of-order events, which needs a read
before each write. This shows what that guard costs against unguarded writes:

* ``hset-each``     one HSET round trip per row (no guard)
* ``hset-pipeline`` one pipelined round trip per batch (no guard, not atomic)
* ``lua-argv``      :class:`RedisPredictionSink`: guarded Lua script, rows as flat ARGV
* ``lua-json``      the same guard, rows packed as one JSON string decoded by cjson in Lua
                    (bench only: compares event ids with Lua's locale-dependent ``>=``)

Usage: ``python bench/redis_sink.py --url redis://127.0.0.1:6379/15 --rows 50000 --batch 1000``.
It writes keys under ``pred:bench:*`` and deletes them before each strategy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streaminfer.connectors.redis_sink import PredictionRow, RedisPredictionSink

_JSON_LUA = """
local ttl = tonumber(ARGV[1])
local rows = cjson.decode(ARGV[2])
local applied = 0
for i, r in ipairs(rows) do
  local key = KEYS[i]
  local cur = redis.call('HMGET', key, 'event_ts', 'event_id')
  local c = tonumber(cur[1])
  if (not c) or r[2] > c or (r[2] == c and r[1] >= cur[2]) then
    redis.call('HSET', key, 'event_id', r[1], 'event_ts', r[2], 'processed_ts', r[3],
      'score', r[4], 'model_name', r[5], 'model_version', r[6], 'scores', '[]')
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    applied = applied + 1
  end
end
return applied
"""


def _fields(row: PredictionRow) -> dict[str, str | int]:
    return {
        "event_id": row.event_id,
        "event_ts": row.event_ts,
        "processed_ts": row.processed_ts,
        "score": repr(row.score),
        "model_name": row.model_name,
        "model_version": row.model_version,
        "scores": "[]",
    }


def _make_rows(n: int, keys: int) -> list[PredictionRow]:
    now = int(time.time() * 1000)
    return [
        PredictionRow(
            event_id=f"ev-{i:09d}",
            key=f"user-{i % keys}",
            score=(i % 997) / 997,
            model_version="logreg-1.42",
            event_ts=now + i,
            processed_ts=now + (i // 1000) * 1000 + 3,  # one processing time per batch
            model_name="logreg",
        )
        for i in range(n)
    ]


def _hset_each(client: redis.Redis) -> Callable[[Sequence[PredictionRow]], None]:
    def write(batch: Sequence[PredictionRow]) -> None:
        for row in batch:
            client.hset(f"pred:bench:{row.key}", mapping=_fields(row))

    return write


def _hset_pipeline(client: redis.Redis) -> Callable[[Sequence[PredictionRow]], None]:
    def write(batch: Sequence[PredictionRow]) -> None:
        pipe = client.pipeline(transaction=False)
        for row in batch:
            pipe.hset(f"pred:bench:{row.key}", mapping=_fields(row))
        pipe.execute()

    return write


def _lua_argv(client: redis.Redis) -> Callable[[Sequence[PredictionRow]], None]:
    sink = RedisPredictionSink(client, app="bench")

    def write(batch: Sequence[PredictionRow]) -> None:
        sink.write(batch)

    return write


def _lua_json(client: redis.Redis) -> Callable[[Sequence[PredictionRow]], None]:
    script = client.register_script(_JSON_LUA)

    def write(batch: Sequence[PredictionRow]) -> None:
        keys = [f"pred:bench:{row.key}" for row in batch]
        packed = json.dumps(
            [
                [
                    r.event_id,
                    r.event_ts,
                    r.processed_ts,
                    repr(r.score),
                    r.model_name,
                    r.model_version,
                ]
                for r in batch
            ]
        )
        script(keys=keys, args=[0, packed])

    return write


STRATEGIES: dict[str, Callable[[redis.Redis], Callable[[Sequence[PredictionRow]], None]]] = {
    "hset-each": _hset_each,
    "hset-pipeline": _hset_pipeline,
    "lua-argv": _lua_argv,
    "lua-json": _lua_json,
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15", help="Redis to write to")
    parser.add_argument("--rows", type=int, default=50_000, help="rows per strategy")
    parser.add_argument("--batch", type=int, default=1000, help="rows per write call")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct entity keys")
    parser.add_argument(
        "--only", choices=sorted(STRATEGIES), action="append", help="run just these strategies"
    )
    args = parser.parse_args(argv)

    client = redis.Redis.from_url(args.url)
    rows = _make_rows(args.rows, args.keys)
    batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
    print(f"{args.rows} rows, batches of {args.batch}, {args.keys} keys, redis {args.url}")
    for name in args.only or list(STRATEGIES):
        for key in client.scan_iter("pred:bench:*", count=10_000):
            client.delete(key)
        write = STRATEGIES[name](client)
        start = time.perf_counter()
        for batch in batches:
            write(batch)
        elapsed = time.perf_counter() - start
        print(f"{name:>14}: {args.rows / elapsed:>10,.0f} rows/s  ({elapsed:.2f} s)")
    for key in client.scan_iter("pred:bench:*", count=10_000):
        client.delete(key)


if __name__ == "__main__":
    main()
