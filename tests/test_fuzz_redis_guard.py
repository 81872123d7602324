"""Property test against the real redis-server: whatever order events arrive in, however they
are batched, and however often a crash makes the worker replay from an earlier offset, each
``pred:{app}:{key}`` hash ends holding the newest ``(event_ts, event_id)`` row by the sink's
rule (event_id compared as UTF-8 bytes, ties on the whole pair going to the later write)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from fuzzing import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from streaminfer.connectors.prediction import PredictionRow, Predictions
from streaminfer.connectors.redis_sink import RedisPredictionSink, WriteResult

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

BASE_TS = 1_764_120_000_000
KEYS = st.sampled_from(["u1", "u2", "ü-3", "k:4"])
# Ids where byte order matters: prefixes, "ev-10" < "ev-9", multi-byte UTF-8, NUL, empty.
IDS = st.sampled_from(["ev-1", "ev-10", "ev-9", "ev-1é", "ev-1z", "é", "ẞ", "😀", "a\x00b", ""])
EVENTS = st.tuples(KEYS, st.integers(BASE_TS - 2, BASE_TS + 3), IDS,
                   st.sampled_from([0.0, 0.25, -1.5, 0.9, 1e-7]),
                   st.sampled_from([(), (0.75, 0.25), (1.0,)]))


@st.composite
def deliveries(draw: st.DrawFn, per_row_constants: bool) -> list[list[PredictionRow]]:
    """The batches a worker writes for a random event stream: random batch sizes, and up to
    three crashes after which it resumes from an earlier offset (a replay, batched anew and
    scored again, maybe by another model version)."""
    events = draw(st.lists(EVENTS, min_size=1, max_size=40))
    batches: list[list[PredictionRow]] = []
    pos, crashes = 0, draw(st.integers(0, 3))
    while pos < len(events):
        size = draw(st.integers(1, 12))
        processed, version = BASE_TS + 100 + len(batches), draw(st.sampled_from(["v1", "v2"]))
        rows = []
        for key, ts, event_id, score, scores in events[pos:pos + size]:
            if per_row_constants:  # several (processed_ts, model, version) groups per batch
                version = draw(st.sampled_from(["v1", "v2"]))
            rows.append(PredictionRow(event_id, key, score, version, ts, processed, "m",
                                      scores if per_row_constants else ()))
        batches.append(rows)
        pos += size
        if crashes and draw(st.booleans()):
            crashes -= 1
            pos = draw(st.integers(0, pos))
    return batches


def _newer_or_same(row: PredictionRow, than: PredictionRow | None) -> bool:
    """The documented rule, stated independently: (event_ts, UTF-8 bytes of event_id) >=."""
    return than is None or ((row.event_ts, row.event_id.encode())
                            >= (than.event_ts, than.event_id.encode()))


def _stored(client: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}


def _check(client: redis.Redis, batches: list[list[PredictionRow]], columns: bool) -> None:
    app = f"fuzz-{uuid.uuid4().hex[:8]}"
    sink = RedisPredictionSink(client, app)
    expected: dict[str, PredictionRow] = {}
    try:
        for rows in batches:
            best: dict[str, PredictionRow] = {}
            for row in rows:  # later rows win ties, as later writes do
                if _newer_or_same(row, best.get(row.key)):
                    best[row.key] = row
            applied = 0
            for key, row in best.items():
                if _newer_or_same(row, expected.get(key)):
                    expected[key] = row
                    applied += 1
            result = (sink.write_packed(sink.pack_columns(Predictions.from_rows(rows)))
                      if columns else sink.write(rows))
            assert result == WriteResult(applied, len(rows) - applied)

        for key, row in expected.items():
            newest = max((r.event_ts, r.event_id.encode()) for b in batches for r in b
                         if r.key == key)
            stored = _stored(client, sink.key_for(key))
            assert (int(stored["event_ts"]), stored["event_id"].encode()) == newest
            want: dict[str, Any] = {
                "event_id": row.event_id, "event_ts": str(row.event_ts),
                "processed_ts": str(row.processed_ts), "model_name": row.model_name,
                "model_version": row.model_version}
            assert {k: stored[k] for k in want} == want
            assert float(stored["score"]) == row.score
            if not columns:  # the hot path writes the app's declared outputs only
                assert json.loads(stored["scores"]) == list(row.scores)
    finally:
        for key in expected:
            client.delete(sink.key_for(key))


@settings(max_examples=examples(100))
@given(deliveries(per_row_constants=True))
def test_write_keeps_the_newest_row_per_key_through_replays(
        services: Any, batches: list[list[PredictionRow]]) -> None:
    client = redis.Redis.from_url(services.redis_url)
    try:
        _check(client, batches, columns=False)
    finally:
        client.close()


@settings(max_examples=examples(60))
@given(deliveries(per_row_constants=False))
def test_hot_path_column_writes_follow_the_same_rule(
        services: Any, batches: list[list[PredictionRow]]) -> None:
    client = redis.Redis.from_url(services.redis_url)
    try:
        _check(client, batches, columns=True)
    finally:
        client.close()
