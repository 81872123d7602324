"""The sync protocol's pure logic on an in-memory log: deltas, sharding, rounds, positions."""

from __future__ import annotations

import time

import numpy as np
import torch

from streaminfer.models import Interactions, Model, create_model
from streaminfer.models.standardizer import Standardizer
from streaminfer.models.sync import (
    Delta,
    MemoryLog,
    SyncPosition,
    TableDelta,
    create_sync,
    shared_tensors,
)
from streaminfer.models.sync.delta import decode, encode
from streaminfer.models.sync.sharding import nbytes, place


def test_greedy_sharding_balances_and_tables_split_by_row_ranges() -> None:
    delta = Delta(
        dense={"big": torch.zeros(1000), "small": torch.zeros(10)},
        tables={"emb": TableDelta([f"i{k}" for k in range(300)], torch.ones(300, 4))},
    )
    pieces = delta.pieces(max_piece_bytes=1600)  # 100 rows of 16 bytes per piece
    assert sum(1 for p in pieces if any(k.startswith("table/emb/") for k in p)) == 3
    shards = place(pieces, 3)
    loads = sorted(sum(nbytes({k: v}) for k, v in s.items()) for s in shards)
    assert loads[-1] - loads[0] <= 4000  # the 4000-byte tensor cannot be split
    merged = {k: v for s in shards for k, v in s.items()}
    back = Delta.from_tensors(merged)
    assert back.tables["emb"].ids == delta.tables["emb"].ids
    assert torch.equal(back.dense["big"], delta.dense["big"])


def test_additive_standardizer_merges_like_all_the_data_and_loads_welford_state() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 3, (100, 2)), rng.normal(-1, 0.5, (50, 2))
    one, left, right = Standardizer(2), Standardizer(2), Standardizer(2)
    one.update(torch.from_numpy(np.vstack([a, b])))
    left.update(torch.from_numpy(a))
    right.update(torch.from_numpy(b))
    for name in ("count", "sum", "sumsq"):  # merging = adding the statistics
        getattr(left, name).add_(getattr(right, name))
    torch.testing.assert_close(left.var, one.var)
    legacy = {"count": one.count, "mean": one.mean, "m2": one.var * one.count}
    restored = Standardizer(2)
    restored.load_state_dict(legacy)
    torch.testing.assert_close(restored.mean, one.mean)
    torch.testing.assert_close(restored.var, one.var)


def _recommender() -> Model:
    return create_model("recommender", device="cpu", seed=0, user_capacity=200, item_capacity=200)


def test_recommender_delta_carries_touched_item_rows_and_no_user_tables() -> None:
    log = MemoryLog(2)
    model = _recommender()
    sync = create_sync("async", model, worker_id="r0", every_updates=1, transport=log.transport())
    model.learn(Interactions(["ann", "ben", "ann"], ["x", "y", "z"]), [4.0, 3.0, 5.0])
    sync.after_learn()
    tensors: dict[str, torch.Tensor] = {}
    for partition in log.records:
        for _, value in partition:
            tensors.update(decode(value))
    assert not any("user" in k for k in tensors)
    delta = Delta.from_tensors(tensors)
    assert sorted(delta.tables["item_emb"].ids) == ["x", "y", "z"]  # 3 rows of a 200-row table
    assert delta.tables["item_emb"].values.shape == (3, model.num_factors)
    assert delta.stats["rating_count"].item() == 3


def _classifier_workers(log: MemoryLog, n: int, **kw: object) -> tuple[list[Model], list]:
    models = [create_model("classifier", num_features=4, device="cpu", seed=0) for _ in range(n)]
    syncs = [
        create_sync("sync", m, worker_id=f"w{i}", every_updates=3, every_ms=30,
                    round_timeout_ms=150, transport=log.transport(), **kw)  # type: ignore[arg-type]
        for i, m in enumerate(models)
    ]
    return models, syncs


def _until_in_step(syncs: list, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in syncs:
            s.poll()
        stats = [s.stats() for s in syncs]
        if all(st["settled"] for st in stats) and len({st["round"] for st in stats}) == 1:
            return
        time.sleep(0.002)
    raise AssertionError([s.stats() for s in syncs])


def test_restart_from_position_replays_rounds_and_mean_aggregate_stays_identical() -> None:
    log = MemoryLog(2)
    models, syncs = _classifier_workers(log, 2, aggregate="mean")
    rng = np.random.default_rng(1)
    for _ in range(12):
        for model, sync in zip(models, syncs, strict=True):
            x = rng.normal(size=(8, 4)).astype(np.float32)
            model.learn(x, (x[:, 0] > 0).astype(np.float32))
            sync.after_learn()
            sync.poll()
    _until_in_step(syncs)
    assert models[0].version == models[1].version  # both count the 24 steps of the group
    assert models[0].version.updates == 24
    checkpoint = models[1].state_dict()
    position = SyncPosition.from_json(syncs[1].position())
    assert position.round == syncs[1].stats()["round"] >= 2
    syncs[1].close()
    # More rounds happen while w1 is down (w0 alone after the timeout)...
    for _ in range(6):
        x = rng.normal(size=(8, 4)).astype(np.float32)
        models[0].learn(x, (x[:, 0] > 0).astype(np.float32))
        syncs[0].after_learn()
        syncs[0].poll()
    # ...and w1 comes back from its checkpoint and position, then replays into step.
    back = create_model("classifier", num_features=4, device="cpu", seed=0)
    back.load_state_dict(checkpoint)
    back_sync = create_sync("sync", back, worker_id="w1", every_updates=3, every_ms=30,
                            round_timeout_ms=150, aggregate="mean",
                            start_position=position.to_json(),
                            transport=log.transport(position.offsets))
    _until_in_step([syncs[0], back_sync])
    assert back_sync.stats()["workers_in_last_round"] == 2
    a, b = shared_tensors(models[0]), shared_tensors(back)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_round_bookkeeping_stays_bounded_over_many_rounds() -> None:
    """Per-round books are pruned as rounds close: a long run holds a few rounds, not all."""
    log = MemoryLog(2)
    models, syncs = _classifier_workers(log, 2)
    rng = np.random.default_rng(2)
    deadline = time.monotonic() + 20
    while min(s.stats()["round"] for s in syncs) < 12 and time.monotonic() < deadline:
        for model, sync in zip(models, syncs, strict=True):
            x = rng.normal(size=(8, 4)).astype(np.float32)
            model.learn(x, (x[:, 0] > 0).astype(np.float32))
            sync.after_learn()
            sync.poll()
        time.sleep(0.002)
    _until_in_step(syncs)
    assert sum(s.stats()["closes_sent"] for s in syncs) >= 12
    for sync in syncs:
        books = (sync._deltas, sync._senders, sync._first_seen, sync._closes,
                 sync._close_sent, sync._members)
        assert all(len(book) <= 3 for book in books), [len(b) for b in books]


def test_async_drops_a_delta_whose_shards_stopped_coming() -> None:
    """A sender that died between two shards leaves an incomplete delta: dropped after
    ``incomplete_ttl_s`` and counted, so a long run cannot pile them up."""
    log = MemoryLog(2)
    model = create_model("classifier", num_features=4, device="cpu", seed=0)
    sync = create_sync("async", model, worker_id="w0", every_updates=3, every_ms=30,
                       transport=log.transport())
    headers = {"sync.kind": "delta", "sync.mode": "async", "sync.worker": "dead#1",
               "sync.seq": "0", "sync.shard": "0", "sync.shards": "2", "sync.sent_ms": "0",
               "sync.updates": "1"}
    log.transport().send(0, encode({}), headers)  # shard 1 of 2 never comes
    sync.poll()
    assert sync.stats()["incomplete_deltas"] == 1
    sync.incomplete_ttl_s = 0.0
    sync.poll()
    assert sync.stats()["incomplete_deltas"] == 0
    assert sync.stats()["dropped_incomplete"] == 1
