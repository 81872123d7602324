"""Workers synchronising over a real Kafka sync topic: three model copies in one process.

Each worker learns from its own third of a synthetic stream, exactly as three stream workers
owning different partitions would, and calls ``after_learn`` / ``poll`` between batches.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from confluent_kafka.admin import AdminClient
from sklearn.metrics import roc_auc_score

from streaminfer.connectors.sources import SyntheticClassifier, SyntheticRatings
from streaminfer.models import Interactions, Model, create_model
from streaminfer.models.sync import Sync, shared_tensors
from streaminfer.streams.wiring import create_kafka_sync

pytestmark = pytest.mark.services

FEATURES = 8
BATCH = 32


@pytest.fixture
def sync_topic(services: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """A fresh sync topic name (the sync creates it) and the Kafka config; deleted after."""
    config = {"bootstrap.servers": services.bootstrap}
    topic = f"test-sync-{uuid.uuid4().hex[:8]}"
    yield config, topic
    AdminClient(config).delete_topics([topic], operation_timeout=10)


def _data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    events, labels = next(SyntheticClassifier(seed=3, num_features=FEATURES).chunks(rows, rows))
    return np.array([e["features"] for e in events], dtype=np.float32), labels


def _classifier() -> Model:
    return create_model("classifier", num_features=FEATURES, device="cpu", seed=0)


def _wait(condition: Callable[[], bool], syncs: list[Sync], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in syncs:
            s.poll()
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"sync did not settle in {timeout}s: {[s.stats() for s in syncs]}")


def _in_step(syncs: list[Sync]) -> Callable[[], bool]:
    """All replicas settled on the same round: their shared params must then be identical."""
    def check() -> bool:
        stats = [s.stats() for s in syncs]
        return all(st["settled"] for st in stats) and len({st["round"] for st in stats}) == 1
    return check


def _learn_thirds(models: list[Model], syncs: list[Sync], x: np.ndarray, y: np.ndarray) -> None:
    per = len(x) // len(models)
    for start in range(0, per, BATCH):
        for i, (model, sync) in enumerate(zip(models, syncs, strict=True)):
            lo, hi = i * per + start, min(i * per + start + BATCH, (i + 1) * per)
            model.learn(x[lo:hi], y[lo:hi])
            sync.after_learn()
            sync.poll()


def _assert_bitwise_equal(a: Model, b: Model) -> None:
    ta, tb = shared_tensors(a), shared_tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), f"{name} differs"


def _auc(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(roc_auc_score(y, model.predict(x).numpy()))


def _single_model_auc(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    single = _classifier()
    for start in range(0, len(x), BATCH):
        single.learn(x[start:start + BATCH], y[start:start + BATCH])
    return _auc(single, xt, yt)


def test_sync_rounds_leave_three_workers_bitwise_equal_and_as_good_as_one_model(
    sync_topic: tuple[dict[str, Any], str],
) -> None:
    config, topic = sync_topic
    x, y = _data(4500)
    xt, yt = x[3600:], y[3600:]
    models = [_classifier() for _ in range(3)]
    syncs = [
        create_kafka_sync("sync", m, kafka_config=config, topic=topic, worker_id=f"w{i}",
                          every_updates=15, every_ms=100, round_timeout_ms=1000, shards=3)
        for i, m in enumerate(models)
    ]
    try:
        _learn_thirds(models, syncs, x[:3600], y[:3600])
        _wait(_in_step(syncs), syncs)
        _assert_bitwise_equal(models[0], models[1])
        _assert_bitwise_equal(models[0], models[2])
        stats = syncs[0].stats()
        assert stats["workers_in_last_round"] == 3 and stats["rounds_closed"] >= 2
        assert float(shared_tensors(models[0])["scaler.count"]) == 3600  # every row counted once
        assert _auc(models[0], xt, yt) == pytest.approx(
            _single_model_auc(x[:3600], y[:3600], xt, yt), abs=0.02
        )
    finally:
        for s in syncs:
            s.close()


def test_stalled_worker_is_dropped_and_a_late_starter_replays_into_step(
    sync_topic: tuple[dict[str, Any], str],
) -> None:
    config, topic = sync_topic
    x, y = _data(1800)
    models = [_classifier() for _ in range(3)]
    syncs = [
        create_kafka_sync("sync", m, kafka_config=config, topic=topic, worker_id=f"w{i}",
                          every_updates=10, every_ms=100, round_timeout_ms=800, shards=2)
        for i, m in enumerate(models)
    ]
    late_sync: Sync | None = None
    try:
        _learn_thirds(models, syncs, x[:900], y[:900])
        _wait(_in_step(syncs), syncs)
        stalled_at = syncs[0].stats()["round"]
        # w2 stops participating (no poll, no publish); w0 and w1 keep learning.
        _learn_thirds(models[:2], syncs[:2], x[900:1800], y[900:1800])
        _wait(lambda: syncs[0].stats()["round"] >= stalled_at + 3, syncs[:2])
        _wait(_in_step(syncs[:2]), syncs[:2])
        assert syncs[0].stats()["workers_in_last_round"] == 2
        _assert_bitwise_equal(models[0], models[1])

        late = _classifier()
        late_sync = create_kafka_sync("sync", late, kafka_config=config, topic=topic,
                                      worker_id="w3", every_updates=10, every_ms=100,
                                      round_timeout_ms=800, shards=2)
        live = [syncs[0], syncs[1], late_sync]
        _wait(lambda: late_sync.stats()["workers_in_last_round"] == 3 and _in_step(live)(),
              live)
        assert late_sync.stats()["rounds_closed"] > stalled_at + 3  # replayed history
        _assert_bitwise_equal(models[0], late)
    finally:
        for s in [*syncs, *([late_sync] if late_sync else [])]:
            s.close()


def test_async_workers_converge_and_match_one_model(
    sync_topic: tuple[dict[str, Any], str],
) -> None:
    config, topic = sync_topic
    x, y = _data(4500)
    xt, yt = x[3600:], y[3600:]
    models = [_classifier() for _ in range(3)]
    syncs = [
        create_kafka_sync("async", m, kafka_config=config, topic=topic, worker_id=f"w{i}",
                          every_updates=10, every_ms=50, shards=3)
        for i, m in enumerate(models)
    ]
    try:
        _learn_thirds(models, syncs, x[:3600], y[:3600])

        def exchanged() -> bool:
            stats = [s.stats() for s in syncs]
            published = sum(st["published"] for st in stats)
            return all(st["pending_updates"] == 0 for st in stats) and all(
                st["applied"] == published - st["published"] for st in stats
            )

        _wait(exchanged, syncs)
        ref = shared_tensors(models[0])
        for other in models[1:]:
            for name, value in shared_tensors(other).items():
                # Same deltas, added in a different order: equal up to float rounding.
                torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-5)
        assert float(ref["scaler.count"]) == 3600
        # each serves the version of the group's updates, not only its own
        steps = sum(st["learn_calls"] for st in (s.stats() for s in syncs))
        assert {str(m.version) for m in models} == {f"v1+u{steps}"}
        assert syncs[0].stats()["staleness_ms_max"] is not None
        assert _auc(models[0], xt, yt) == pytest.approx(
            _single_model_auc(x[:3600], y[:3600], xt, yt), abs=0.02
        )
    finally:
        for s in syncs:
            s.close()


def test_recommender_item_tables_converge_by_id_and_user_tables_stay_local(
    sync_topic: tuple[dict[str, Any], str],
) -> None:
    config, topic = sync_topic
    source = SyntheticRatings(seed=1, users=90, items=60)
    events, ratings = next(source.chunks(1200, 1200))
    # Each worker owns the users of its partitions (by key), as stream workers do.
    owned: list[list[int]] = [[], []]
    for n, event in enumerate(events):
        owned[int(event["user"][1:]) % 2].append(n)
    models = [create_model("recommender", device="cpu", seed=0, user_capacity=500,
                           item_capacity=500) for _ in range(2)]
    syncs = [
        create_kafka_sync("sync", m, kafka_config=config, topic=topic, worker_id=f"r{i}",
                          every_updates=5, every_ms=100, round_timeout_ms=800, shards=2)
        for i, m in enumerate(models)
    ]
    try:
        for start in range(0, 500, 20):
            for i, (model, sync) in enumerate(zip(models, syncs, strict=True)):
                rows = owned[i][start:start + 20]
                batch = Interactions([events[n]["user"] for n in rows],
                                     [events[n]["item"] for n in rows])
                model.learn(batch, ratings[rows])
                sync.after_learn()
                sync.poll()
        _wait(_in_step(syncs), syncs)
        a, b = models
        assert sorted(a.items.ids) == sorted(b.items.ids)  # each learned the other's items
        for item in a.items.ids:
            ra, rb = a.items.row(item), b.items.row(item)
            assert torch.equal(a.tables["item_emb"].weight[ra], b.tables["item_emb"].weight[rb])
            assert torch.equal(a.tables["item_bias"].weight[ra], b.tables["item_bias"].weight[rb])
        assert a.global_mean == b.global_mean
        # Users are per-key state: a user the other worker owns stays unknown here.
        assert a.users.ids and b.users.ids and not set(a.users.ids) & set(b.users.ids)
        stats = syncs[0].stats()
        # Touched rows of item_emb and item_bias only, never the 500-row tables.
        assert 0 < stats["rows_out"] <= stats["published"] * 2 * len(a.items)
    finally:
        for s in syncs:
            s.close()
