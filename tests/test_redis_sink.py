"""Redis sinks against the real redis-server: what a user sees with ``HGETALL pred:{app}:{key}``
and ``ZREVRANGE recs:{user}`` after out-of-order events, replays and TTLs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from streaminfer.connectors.redis_sink import (
    PredictionRow,
    Predictions,
    Recommendations,
    RedisPredictionSink,
    RedisRecommendationSink,
    WriteResult,
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(client: redis.Redis, key: str) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in client.hgetall(key).items()}


def _row(key: str, event_ts: int, event_id: str | None = None, score: float = 0.5) -> PredictionRow:
    return PredictionRow(
        event_id=event_id or f"ev-{event_ts}",
        key=key,
        score=score,
        model_version="logreg-1.7",
        event_ts=event_ts,
        processed_ts=event_ts + 5,
        model_name="logreg",
    )


@pytest.fixture
def app(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh app name per test (users are ``{app}-...``), so tests never see each other's
    keys; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    for pattern in (f"pred:{name}:*", f"recs:{name}-*", f"recs_meta:{name}-*"):
        for key in redis_client.scan_iter(pattern, count=10_000):
            redis_client.delete(key)


def test_older_event_in_a_later_batch_does_not_overwrite(redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)

    assert sink.write([_row("u1", 2_000, score=0.9)]) == WriteResult(applied=1, stale=0)
    assert sink.write([_row("u1", 1_000, score=0.1)]) == WriteResult(applied=0, stale=1)

    stored = _hash(redis_client, f"pred:{app}:u1")
    assert stored == {
        "event_id": "ev-2000",
        "event_ts": "2000",
        "processed_ts": "2005",
        "score": "0.9",
        "model_name": "logreg",
        "model_version": "logreg-1.7",
        "scores": "[]",
    }


def test_newest_event_wins_within_one_batch_out_of_order(redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)
    batch = [_row("u1", 3_000), _row("u2", 10), _row("u1", 1_000), _row("u1", 2_000)]

    assert sink.write(batch) == WriteResult(applied=2, stale=2)

    assert _hash(redis_client, f"pred:{app}:u1")["event_id"] == "ev-3000"
    assert _hash(redis_client, f"pred:{app}:u2")["event_id"] == "ev-10"


def test_newer_event_replaces_stored_one(redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)
    sink.write([_row("u1", 1_000, score=0.1)])

    assert sink.write([_row("u1", 1_001, score=0.7)]) == WriteResult(applied=1, stale=0)

    assert _hash(redis_client, f"pred:{app}:u1")["score"] == "0.7"


def test_replaying_a_batch_leaves_identical_state(redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)
    batch = [_row(f"u{i % 7}", 1_000 + (i * 37) % 101, event_id=f"ev-{i:03d}") for i in range(50)]
    sink.write(batch)
    keys = sorted(_text(k) for k in redis_client.scan_iter(f"pred:{app}:*", count=10_000))
    before = {k: _hash(redis_client, k) for k in keys}

    sink.write(batch)
    sink.write(list(reversed(batch)))

    assert len(keys) == 7
    assert {k: _hash(redis_client, k) for k in keys} == before


def test_equal_event_time_larger_event_id_wins_in_any_order(redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)
    sink.write([_row("a", 5_000, "ev-b", 0.2)])
    sink.write([_row("a", 5_000, "ev-a", 0.1)])  # same time, smaller id: loses
    sink.write([_row("b", 5_000, "ev-a", 0.1)])
    sink.write([_row("b", 5_000, "ev-b", 0.2)])  # same time, larger id: wins
    sink.write([_row("c", 5_000, "ev-a", 0.1), _row("c", 5_000, "ev-b", 0.2)])
    sink.write([_row("d", 5_000, "ev-b", 0.2), _row("d", 5_000, "ev-a", 0.1)])

    for key in "abcd":
        assert _hash(redis_client, f"pred:{app}:{key}")["event_id"] == "ev-b", key


def test_fallback_marks_are_written_and_cleared_by_a_model_served_batch(
        redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)
    keys = [f"{app}-{i}" for i in range(3)]

    def batch(ts: int, fallback: list[str] | None) -> Predictions:
        return Predictions([f"ev-{ts}-{k}" for k in keys], keys, {"score": [0.25, 0.5, 0.75]},
                           [ts] * 3, ts + 1, "logreg", f"v{ts}", fallback=fallback, digits=9)

    assert sink.write_packed(sink.pack_columns(batch(10, ["", "cached", "default"]))).applied == 3
    stored = [_hash(redis_client, sink.key_for(k)) for k in keys]
    marks = [(h["degraded"], h["fallback"]) for h in stored]
    assert marks == [("0", ""), ("1", "cached"), ("1", "default")]
    assert sink.write_packed(sink.pack_columns(batch(20, None))).applied == 3
    for key, score in zip(keys, ("0.25", "0.5", "0.75"), strict=True):
        stored = _hash(redis_client, sink.key_for(key))
        assert stored == {"event_id": f"ev-20-{key}", "event_ts": "20", "processed_ts": "21",
                          "model_name": "logreg", "model_version": "v20", "score": score,
                          "degraded": "0", "fallback": ""}


def test_scores_are_stored_as_json(redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)
    row = PredictionRow("ev-1", "u1", 0.25, "mlp-3", 1_000, 1_002, "mlp", (0.75, 0.25))

    sink.write([row])

    assert json.loads(_hash(redis_client, f"pred:{app}:u1")["scores"]) == [0.75, 0.25]


def test_ttl_is_set_only_when_asked(redis_client: redis.Redis, app: str):
    RedisPredictionSink(redis_client, app, ttl_s=120).write([_row("ttl", 1_000)])
    RedisPredictionSink(redis_client, app).write([_row("forever", 1_000)])

    assert 0 < redis_client.ttl(f"pred:{app}:ttl") <= 120
    assert redis_client.ttl(f"pred:{app}:forever") == -1


def test_write_survives_script_cache_flush(redis_client: redis.Redis, app: str):
    sink = RedisPredictionSink(redis_client, app)
    sink.write([_row("u1", 1_000)])
    redis_client.script_flush()  # what a Redis restart or failover does to EVALSHA

    assert sink.write([_row("u1", 2_000)]) == WriteResult(applied=1, stale=0)
    assert _hash(redis_client, f"pred:{app}:u1")["event_ts"] == "2000"


def test_large_batch_split_into_calls_counts_every_row(
    redis_client: redis.Redis, app: str, monkeypatch: pytest.MonkeyPatch
):
    sink = RedisPredictionSink(redis_client, app)
    sink.write([_row("k0", 5_000)])
    monkeypatch.setattr("streaminfer.connectors.redis_sink.MAX_ROWS_PER_CALL", 2)

    result = sink.write([_row(f"k{i}", 1_000 + i) for i in range(7)])

    assert result == WriteResult(applied=6, stale=1)
    assert [_hash(redis_client, f"pred:{app}:k{i}")["event_ts"] for i in (0, 6)] == [
        "5000",
        "1006",
    ]


def test_accepts_a_redis_url(services: Any, settings: Any, app: str):
    sink = RedisPredictionSink(settings.redis_url, app)

    sink.write([_row("u1", 1_000)])

    assert sink.client.hget(sink.key_for("u1"), "event_id") in (b"ev-1000", "ev-1000")


def _recs(*rows: tuple[str, int, dict[str, float]]) -> Recommendations:
    """One batch of top-N lists: ``(user, event_ts, {item: score})`` per row."""
    return Recommendations.from_lists(
        [user for user, _, _ in rows], [list(items) for _, _, items in rows],
        [list(items.values()) for _, _, items in rows], [f"ev-{ts}" for _, ts, _ in rows],
        [ts for _, ts, _ in rows], processed_ts=rows[0][1] + 3, model_version="mf-9")


def _top(client: redis.Redis, user: str) -> list[tuple[str, float]]:
    return [(_text(m), s) for m, s in client.zrevrange(f"recs:{user}", 0, -1, withscores=True)]


def test_recommendations_replace_the_whole_top_n(redis_client: redis.Redis, app: str):
    user = f"{app}-u1"
    sink = RedisRecommendationSink(redis_client)
    sink.write(_recs((user, 1_000, {"i1": 0.9, "i2": 0.5, "i3": 0.1})))

    assert sink.write(_recs((user, 2_000, {"i4": 0.8, "i2": 0.6}))) == WriteResult(1, 0)

    assert _top(redis_client, user) == [("i4", 0.8), ("i2", 0.6)]
    meta = _hash(redis_client, f"recs_meta:{user}")
    assert meta == {
        "event_id": "ev-2000",
        "event_ts": "2000",
        "processed_ts": "2003",
        "model_version": "mf-9",
    }


def test_older_recommendations_are_ignored(redis_client: redis.Redis, app: str):
    user, other = f"{app}-u1", f"{app}-u2"
    sink = RedisRecommendationSink(redis_client)
    sink.write(_recs((user, 2_000, {"new": 1.0})))

    result = sink.write(
        _recs((user, 1_000, {"old": 1.0}), (other, 1_500, {"x": 0.3}), (other, 1_200, {"y": 0.9}))
    )

    assert result == WriteResult(applied=1, stale=2)
    assert _top(redis_client, user) == [("new", 1.0)]
    assert _top(redis_client, other) == [("x", 0.3)]


def test_recommendations_ttl_and_replay(redis_client: redis.Redis, app: str):
    user = f"{app}-u1"
    sink = RedisRecommendationSink(redis_client, ttl_s=60)
    batch = _recs((user, 1_000, {"a": 0.2, "b": 0.4}))
    sink.write(batch)

    sink.write(batch)

    assert _top(redis_client, user) == [("b", 0.4), ("a", 0.2)]
    assert 0 < redis_client.ttl(f"recs:{user}") <= 60
    assert 0 < redis_client.ttl(f"recs_meta:{user}") <= 60


def test_recommendation_needs_one_score_per_item():
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        Recommendations.from_lists(["u"], [["a", "b"]], [[0.1]], ["ev"], [1], 2)


def test_a_batch_of_top_n_lists_of_different_lengths(redis_client: redis.Redis, app: str):
    """Rows shorter than the batch's longest (a user who rated nearly every item) and empty
    ones: each user's set holds its own items only, with the scores exactly as given."""
    full, short, empty = f"{app}-full", f"{app}-short", f"{app}-empty"
    sink = RedisRecommendationSink(redis_client)
    sink.write(_recs((empty, 500, {"old": 1.0})))

    result = sink.write(_recs((full, 1_000, {"a": 0.1, "b": 2.5, "c": -1 / 3}),
                              (short, 1_000, {"d": 1e-7}), (empty, 1_000, {})))

    assert result == WriteResult(applied=3, stale=0)
    assert _top(redis_client, full) == [("b", 2.5), ("a", 0.1), ("c", -1 / 3)]
    assert _top(redis_client, short) == [("d", 1e-7)]
    assert _top(redis_client, empty) == []
    assert _hash(redis_client, f"recs_meta:{empty}")["event_id"] == "ev-1000"
