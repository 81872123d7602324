"""User rows kept per partition: what a worker that takes over a partition gets back."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from streaminfer.connectors.sources import SyntheticRatings
from streaminfer.models.factory import create_model
from streaminfer.models.recommender import Interactions, MatrixFactorization
from streaminfer.models.user_rows import decode_users, encode_users
from streaminfer.streams.join import MemoryJoinStore
from streaminfer.streams.user_state import UserState, user_key

PARTITIONS = 4


def partition_of(user: str) -> int:
    return int(user.removeprefix("u")) % PARTITIONS


def trained(optimizer: str = "adagrad", count: int = 1500) -> tuple[MatrixFactorization,
                                                                     MemoryJoinStore]:
    """A model trained on a rating stream, every batch's users written to a dict store."""
    model = create_model("recommender", device="cpu", optimizer=optimizer, num_factors=8,
                         user_capacity=600, item_capacity=300)
    assert isinstance(model, MatrixFactorization)
    store = MemoryJoinStore()
    state = UserState(store, model)
    events, ratings = next(SyntheticRatings(seed=5, users=60, items=40).chunks(count, count))
    for start in range(0, count, 50):
        part = events[start : start + 50]
        users, items = [e["user"] for e in part], [e["item"] for e in part]
        model.learn(Interactions(users, items), ratings[start : start + 50])
        state.save(users, [partition_of(u) for u in users])
    return model, store


def fresh() -> MatrixFactorization:
    model = create_model("recommender", device="cpu", num_factors=8, user_capacity=600,
                         item_capacity=300, seed=9)
    assert isinstance(model, MatrixFactorization)
    return model


def take_items(into: MatrixFactorization, source: MatrixFactorization) -> None:
    """What parameter sync provides: the same item parameters (and global mean)."""
    into.items.load_ids(source.items.ids)
    n = len(source.items)
    with torch.no_grad():
        for name in ("item_emb", "item_bias"):
            into.tables[name].weight[:n] = source.tables[name].weight[:n]
    into._rating_sum, into._rating_count = source._rating_sum.clone(), source._rating_count.clone()


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd", "adam"])
def test_loaded_users_predict_and_rank_exactly_as_on_the_old_owner(optimizer: str) -> None:
    old, store = trained(optimizer)
    new = fresh()
    take_items(new, old)
    users = [f"u{i}" for i in range(60) if partition_of(f"u{i}") == 1]
    pairs = Interactions([u for u in users for _ in range(40)],
                         [f"i{j}" for _ in users for j in range(40)])
    before = new.predict(pairs)

    loaded = UserState(store, new).load({1})

    assert loaded == len(users)
    assert torch.equal(new.predict(pairs), old.predict(pairs))
    assert not torch.equal(before, old.predict(pairs))
    for user in users[:5]:  # seen items (by id) are excluded from the ranking as before
        assert new.top_n(user, 10) == old.top_n(user, 10)


def test_learning_continues_with_the_old_owners_optimiser_state() -> None:
    old, store = trained("adagrad")
    new, stateless = fresh(), fresh()
    take_items(new, old)
    take_items(stateless, old)
    UserState(store, new).load({2})
    user = next(f"u{i}" for i in range(60) if partition_of(f"u{i}") == 2)
    stateless.import_users(replace(old.export_users([user]), optim={}))
    step = Interactions([user], ["i3"])
    for model in (old, new, stateless):
        model.learn(step, [4.0])
    after, moved = old.export_users([user]), new.export_users([user])
    assert torch.allclose(moved.emb, after.emb, atol=1e-6)
    assert torch.allclose(moved.bias, after.bias, atol=1e-6)
    # Without Adagrad's accumulated sums the same step would move the user much further.
    assert not torch.allclose(stateless.export_users([user]).emb, after.emb, atol=1e-3)


def test_users_of_other_partitions_are_not_loaded() -> None:
    _, store = trained()
    new = fresh()
    state = UserState(store, new)
    state.load({0, 3})
    for i in range(60):
        assert (f"u{i}" in new.users) == (partition_of(f"u{i}") in {0, 3})


def test_a_partition_already_owned_is_not_reloaded_until_it_comes_back() -> None:
    _, store = trained()
    new = fresh()
    state = UserState(store, new)
    state.load({1})
    first = state.loaded
    state.load({1, 2})  # a rebalance that adds partition 2 only
    assert state.loaded - first == len([i for i in range(60) if partition_of(f"u{i}") == 2])
    state.drop({1})
    state.load({1})
    assert state.loaded - first > len([i for i in range(60) if partition_of(f"u{i}") == 2])


def test_one_record_per_touched_user_per_batch_of_float32_rows() -> None:
    model = fresh()
    store = MemoryJoinStore()
    state = UserState(store, model)
    users, items = ["u1", "u1", "u5", "u1"], ["i1", "i2", "i1", "i3"]
    model.learn(Interactions(users, items), [3.0, 4.0, 2.0, 5.0])
    state.save(users, [partition_of(u) for u in users])
    assert state.saved == 2
    assert sorted(store.data) == [user_key(1, "u1"), user_key(1, "u5")]
    rows = decode_users([("u1", store.data[user_key(1, "u1")])])
    assert rows.emb.dtype == torch.float32 and rows.emb.shape == (1, 8)
    assert rows.seen == [("i1", "i2", "i3")]
    assert set(rows.optim) == {"user_emb.sum", "user_bias.sum"}  # Adagrad's accumulators
    exported = model.export_users(["u1"])
    assert torch.equal(rows.emb, exported.emb) and torch.equal(rows.bias, exported.bias)
    again = decode_users([("u1", encode_users(rows)[0])])
    assert again.seen == rows.seen and torch.equal(again.optim["user_emb.sum"],
                                                   rows.optim["user_emb.sum"])


def test_unknown_users_are_not_written() -> None:
    model = fresh()
    store = MemoryJoinStore()
    UserState(store, model).save(["never-learned"], [0])
    assert store.data == {}
    assert np.isfinite(model.predict(Interactions(["never-learned"], ["i1"])).numpy()).all()


def test_users_touched_within_flush_s_are_written_once_and_let_go_partitions_at_once() -> None:
    model = fresh()
    store = MemoryJoinStore()
    state = UserState(store, model, flush_s=3600.0)
    state._flushed_at -= 3600.0  # the first batch is due
    for users in (["u1", "u2"], ["u1", "u6"], ["u1"]):
        model.learn(Interactions(users, ["i1"] * len(users)), [4.0] * len(users))
        state.save(users, [partition_of(u) for u in users])
    assert sorted(store.data) == [user_key(1, "u1"), user_key(2, "u2")]  # the first batch
    first = store.data[user_key(1, "u1")]

    state.drop({2})  # u6 (partition 2) goes to its next owner now; u1 waits
    assert state.saved == 3 and user_key(2, "u6") in store.data
    assert store.data[user_key(1, "u1")] == first

    state.flush()  # e.g. at close: u1's newest rows, once for its two batches
    assert state.saved == 4 and store.data[user_key(1, "u1")] != first
    newest = decode_users([("u1", store.data[user_key(1, "u1")])])
    assert torch.equal(newest.emb, model.export_users(["u1"]).emb)
