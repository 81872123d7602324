"""The models package as the stream code uses it: create, predict, learn, state."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from streaminfer.models import (
    IdentityModel,
    Interactions,
    MatrixFactorization,
    ModelVersion,
    OnlineClassifier,
    RowBatch,
    Vocabulary,
    create_model,
    resolve_device,
)
from streaminfer.models.standardizer import Standardizer

NUM_FEATURES = 8


def _separable(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable labels on features with very different means and scales."""
    w = np.array([1.5, -2.0, 0.5, 1.0, 0.0, -1.0, 2.0, 0.25])
    z = rng.normal(size=(n, NUM_FEATURES))
    y = (z @ w > 0).astype(np.float32)
    scale = np.array([1, 10, 100, 0.1, 1, 5, 50, 1000], dtype=np.float64)
    x = (z * scale + 3 * scale).astype(np.float32)  # raw inputs need standardising
    return x, y


def _low_rank_ratings(
    rng: np.random.Generator, users: int = 40, items: int = 30, rank: int = 3
) -> np.ndarray:
    """Rating matrix mu + b_u + b_i + P Q^T with strong structure."""
    p = rng.normal(scale=0.8, size=(users, rank))
    q = rng.normal(scale=0.8, size=(items, rank))
    return (
        3.0 + rng.normal(scale=0.3, size=(users, 1)) + rng.normal(scale=0.5, size=items) + p @ q.T
    )


def _trained_classifier(hidden: int = 0, steps: int = 150, seed: int = 0) -> OnlineClassifier:
    rng = np.random.default_rng(seed)
    model = create_model("classifier", num_features=NUM_FEATURES, hidden=hidden, device="cpu")
    assert isinstance(model, OnlineClassifier)
    for _ in range(steps):
        x, y = _separable(32, rng)
        model.learn(x, y)
    return model


def _trained_recommender(steps: int = 30) -> MatrixFactorization:
    rng = np.random.default_rng(1)
    model = create_model("recommender", device="cpu", user_capacity=64, item_capacity=64)
    assert isinstance(model, MatrixFactorization)
    for _ in range(steps):
        u, i = rng.integers(0, 10, 16), rng.integers(0, 8, 16)
        model.learn(Interactions([f"u{a}" for a in u], [f"i{b}" for b in i]), rng.uniform(1, 5, 16))
    return model


# -- classifier ---------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [0, 16])
def test_classifier_learns_separable_stream_online(hidden: int) -> None:
    model = _trained_classifier(hidden=hidden)
    x_test, y_test = _separable(2000, np.random.default_rng(99))
    scores = model.predict(x_test)
    assert scores.shape == (2000,) and scores.dtype == torch.float32
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    assert roc_auc_score(y_test, scores.numpy()) > 0.9
    assert str(model.version) == "v1+u150"


def test_classifier_accepts_numpy_torch_and_single_vector_alike() -> None:
    model = _trained_classifier(steps=5)
    x, _ = _separable(4, np.random.default_rng(3))
    from_numpy = model.predict(x)
    assert torch.equal(from_numpy, model.predict(torch.from_numpy(x)))
    # One row vs four: the matmul may take another kernel, so equal up to float rounding.
    assert torch.allclose(from_numpy[:1], model.predict(x[0]), rtol=1e-6, atol=0)


def test_untrained_classifier_scores_are_probabilities() -> None:
    model = create_model("classifier", num_features=3, device="cpu")
    scores = model.predict(np.zeros((5, 3), dtype=np.float32))
    assert scores.shape == (5,) and bool(((scores > 0) & (scores < 1)).all())


def test_wrong_feature_length_says_expected_and_got() -> None:
    model = create_model("classifier", num_features=NUM_FEATURES, device="cpu")
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got \(4, 7\)"):
        model.predict(np.zeros((4, 7), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got \(2, 8, 1\)"):
        model.learn(np.zeros((2, 8, 1)), [0, 1])


def test_nan_features_and_bad_targets_are_refused_with_location() -> None:
    model = create_model("classifier", num_features=NUM_FEATURES, device="cpu")
    x = np.zeros((3, NUM_FEATURES), dtype=np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"finite features, got nan at row 1, column 2"):
        model.predict(x)
    good = np.zeros((3, NUM_FEATURES), dtype=np.float32)
    with pytest.raises(ValueError, match=r"expects 3 targets \(one per row\), got 2"):
        model.learn(good, [0, 1])
    with pytest.raises(ValueError, match=r"targets in \[0.0, 1.0\], got values in \[0.0, 2.0\]"):
        model.learn(good, [0, 1, 2])
    with pytest.raises(ValueError, match=r"finite targets, got nan at row 2"):
        model.learn(good, [0, 1, float("nan")])
    assert model.version.updates == 0  # refused batches do not count as updates


def test_standardizer_matches_numpy_over_many_batches() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(loc=7.0, scale=[1.0, 30.0], size=(500, 2))
    scaler = Standardizer(2)
    for chunk in np.array_split(data, [1, 2, 50, 51, 300]):
        scaler.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(scaler.mean.numpy(), data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.var.numpy(), data.var(axis=0), rtol=1e-10)


def test_standardisation_is_part_of_state() -> None:
    trained = _trained_classifier(steps=20)
    fresh = create_model("classifier", num_features=NUM_FEATURES, device="cpu")
    fresh.load_state_dict(trained.state_dict())
    x, _ = _separable(64, np.random.default_rng(11))
    assert torch.equal(trained.predict(x), fresh.predict(x))
    assert fresh.version == trained.version
    state = trained.state_dict()
    assert float(state["net.scaler.count"]) == 20 * 32


def test_state_of_another_shape_is_refused() -> None:
    small = create_model("classifier", num_features=4, device="cpu")
    big = create_model("classifier", num_features=8, device="cpu")
    with pytest.raises(ValueError, match="does not fit"):
        big.load_state_dict(small.state_dict())


# -- seeds, devices, factory ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "options"),
    [("classifier", {"num_features": 5, "hidden": 8}), ("recommender", {"user_capacity": 32})],
)
def test_same_seed_gives_bitwise_identical_params(app: str, options: dict) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    a = create_model(app, seed=7, device="cpu", **options).state_dict()
    b = create_model(app, seed=7, device="cpu", **options).state_dict()
    c = create_model(app, seed=8, device="cpu", **options).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)  # creating models leaves the global RNG alone


def test_factory_refuses_unknown_app_optimizer_and_option() -> None:
    with pytest.raises(ValueError, match=r"app must be one of .*'classifier'.*got 'ranker'"):
        create_model("ranker")
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', 'adagrad', 'adam'\]"):
        create_model("classifier", num_features=2, optimizer="lbfgs", device="cpu")
    with pytest.raises(ValueError, match="needs num_features"):
        create_model("classifier", device="cpu")
    with pytest.raises(ValueError, match="bad option for recommender"):
        create_model("recommender", device="cpu", num_features_typo=3)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_every_optimizer_reduces_loss_for_both_models(optimizer: str) -> None:
    rng = np.random.default_rng(2)
    clf = create_model(
        "classifier", num_features=NUM_FEATURES, optimizer=optimizer, lr=0.1, l2=1e-4
    )
    x, y = _separable(256, rng)
    first = clf.learn(x, y)
    for _ in range(30):
        last = clf.learn(x, y)
    assert last < first

    rec = create_model(
        "recommender", optimizer=optimizer, lr=0.05, user_capacity=8, item_capacity=8
    )
    pairs = Interactions(["a", "a", "b", "b"], ["x", "y", "x", "y"])
    ratings = [5.0, 1.0, 1.0, 5.0]
    first = rec.learn(pairs, ratings)
    for _ in range(60):
        last = rec.learn(pairs, ratings)
    assert last < first


def test_device_choice_is_checked_not_guessed() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
            create_model("classifier", num_features=2, device="cpu", amp="fp16")


def test_bf16_autocast_on_cpu_stays_close_to_fp32() -> None:
    fp32 = _trained_classifier(hidden=16, steps=10)
    bf16 = create_model("classifier", num_features=NUM_FEATURES, hidden=16, amp="bf16")
    bf16.load_state_dict(fp32.state_dict())
    x, _ = _separable(256, np.random.default_rng(4))
    a, b = fp32.predict(x), bf16.predict(x)
    assert b.dtype == torch.float32
    assert float((a - b).abs().max()) < 0.05


def test_identity_model_is_the_bare_path() -> None:
    model = IdentityModel()
    x = np.array([[0.25, 9.0], [0.75, 9.0]], dtype=np.float32)
    assert model.predict(x).tolist() == [0.25, 0.75]
    assert model.predict(torch.from_numpy(x)).tolist() == [0.25, 0.75]
    assert model.predict(Interactions(["u"], ["i"])).tolist() == [0.5]
    model.learn(x, [0, 1])
    assert str(model.version) == "v1+u1"


def test_model_version_text_round_trips() -> None:
    version = ModelVersion("v3", 0).bump().bump()
    assert str(version) == "v3+u2"
    assert ModelVersion.parse("v3+u2") == version
    with pytest.raises(ValueError, match="must look like 'v1\\+u42'"):
        ModelVersion.parse("v3")


# -- recommender ---------------------------------------------------------------------------


def test_recommender_beats_global_mean_on_low_rank_stream() -> None:
    rng = np.random.default_rng(0)
    truth = _low_rank_ratings(rng)
    n_users, n_items = truth.shape
    cells = [(u, i) for u in range(n_users) for i in range(n_items)]
    rng.shuffle(cells)
    split = int(0.8 * len(cells))
    train, test = cells[:split], cells[split:]
    model = create_model(
        "recommender", num_factors=8, lr=0.1, l2=1e-4, user_capacity=64, item_capacity=64
    )
    for _epoch in range(15):  # the same stream replayed, as a worker would after a rewind
        for start in range(0, len(train), 64):
            chunk = train[start : start + 64]
            noisy = [truth[u, i] + rng.normal(scale=0.1) for u, i in chunk]
            model.learn(
                Interactions([f"u{u}" for u, _ in chunk], [f"i{i}" for _, i in chunk]), noisy
            )
    actual = np.array([truth[u, i] for u, i in test])
    predicted = model.predict(
        Interactions([f"u{u}" for u, _ in test], [f"i{i}" for _, i in test])
    ).numpy()
    rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
    baseline = float(np.sqrt(np.mean((model.global_mean - actual) ** 2)))
    assert rmse < 0.3 * baseline, (rmse, baseline)  # biases alone give ~0.65


def test_top_n_finds_the_known_best_item_and_skips_seen() -> None:
    model = create_model("recommender", lr=0.2, user_capacity=8, item_capacity=8)
    users = ["bob", "carol", "dave", "alice"]
    items = ["best", "meh", "bad", "worse"]
    truth = {"best": 5.0, "meh": 3.0, "bad": 2.0, "worse": 1.0}
    pairs = [(u, i) for u in users for i in items if not (u == "alice" and i == "best")]
    batch = Interactions([u for u, _ in pairs], [i for _, i in pairs])
    for _ in range(200):
        model.learn(batch, [truth[i] for _, i in pairs])
    ranked = model.top_n("alice", 2, exclude_seen=False)
    assert [item for item, _ in ranked] == ["best", "meh"]
    assert ranked[0][1] > ranked[1][1]
    assert model.top_n("alice", 1)[0][0] == "best"  # alice never rated it
    assert "best" not in [item for item, _ in model.top_n("bob", 4)]  # bob did
    assert model.top_n("bob", 4) == []  # ...and every other item too
    assert model.top_n("stranger", 1)[0][0] == "best"  # cold start ranks by item bias
    predicted = model.predict(Interactions(["alice"], ["best"]))
    assert predicted.item() == pytest.approx(ranked[0][1], abs=1e-5)
    # Ranked together (as the worker ranks a batch's users), each user keeps their own list:
    # alice's unseen "best", bob's empty list and the stranger's cold start.
    together = model.top_n_many(["alice", "bob", "stranger", "alice"], 3)
    alone = [model.top_n(u, 3) for u in ["alice", "bob", "stranger", "alice"]]
    assert [[i for i, _ in r] for r in together] == [["best"], [], ["best", "meh", "bad"],
                                                     ["best"]]
    for got, want in zip(together, alone, strict=True):
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)


def test_learn_touches_only_the_rows_in_the_batch() -> None:
    model = create_model("recommender", optimizer="adagrad", user_capacity=16, item_capacity=16)
    assert isinstance(model, MatrixFactorization)
    model.learn(Interactions(["a", "b", "c"], ["x", "y", "z"]), [1.0, 2.0, 3.0])
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("tables.")}
    model.learn(Interactions(["b"], ["z"]), [5.0])
    after = model.state_dict()
    user_rows_changed = (before["tables.user_emb.weight"] != after["tables.user_emb.weight"]).any(1)
    item_rows_changed = (before["tables.item_emb.weight"] != after["tables.item_emb.weight"]).any(1)
    assert user_rows_changed.nonzero().flatten().tolist() == [model.users.row("b")]
    assert item_rows_changed.nonzero().flatten().tolist() == [model.items.row("z")]
    grad = model.tables["user_emb"].weight.grad  # None: stepped in place (models.sparse_rows)
    assert grad is None or grad.is_sparse


def test_unknown_ids_get_the_cold_start_score_without_growing_vocab() -> None:
    model = _trained_recommender()
    known_item = model.items.id_of(0)
    score = model.predict(Interactions(["never-seen"], [known_item])).item()
    b_i = model.tables["item_bias"].weight[0, 0].item()
    assert score == pytest.approx(model.global_mean + b_i, abs=1e-5)
    assert "never-seen" not in model.users


def test_recommender_accepts_row_batches_and_refuses_bad_ones() -> None:
    model = _trained_recommender()
    by_id = model.predict(Interactions(["u1", "u2"], ["i3", "i4"]))
    rows = RowBatch(model.users.rows(["u1", "u2"]), model.items.rows(["i3", "i4"]))
    assert torch.equal(by_id, model.predict(rows))
    assert torch.equal(by_id, model.predict((rows.users, rows.items)))
    with pytest.raises(ValueError, match=r"user rows in \[-1, 64\), got values in \[0, 64\]"):
        model.predict((torch.tensor([0, 64]), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="got 2 users and 1 items"):
        Interactions(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="expects Interactions, RowBatch"):
        model.predict([[0, 1]])
    with pytest.raises(ValueError, match=r"finite targets, got inf at row 0"):
        model.learn(Interactions(["brand-new"], ["x"]), [float("inf")])
    with pytest.raises(ValueError, match=r"expects 1 targets \(one per row\), got 2"):
        model.learn(Interactions(["brand-new"], ["x"]), [1.0, 2.0])
    assert "brand-new" not in model.users  # a refused batch leaves the vocabulary alone


def test_recommender_state_round_trip_includes_vocab_and_history() -> None:
    trained = _trained_recommender()
    fresh = create_model("recommender", device="cpu", user_capacity=64, item_capacity=64, seed=5)
    assert isinstance(fresh, MatrixFactorization)
    fresh.load_state_dict(trained.state_dict())
    pairs = Interactions(["u1", "u9", "nobody"], ["i0", "i7", "i2"])
    assert torch.equal(trained.predict(pairs), fresh.predict(pairs))
    assert fresh.users.ids == trained.users.ids and fresh.items.ids == trained.items.ids
    assert fresh.top_n("u1", 3) == trained.top_n("u1", 3)
    assert fresh.global_mean == trained.global_mean
    assert fresh.version == trained.version


def test_vocabulary_grows_then_hashes_stably() -> None:
    vocab = Vocabulary(2)
    assert vocab.rows(["a", "b", "a"]).tolist() == [0, 1, 0]
    overflow = vocab.row("c")
    assert "c" not in vocab and len(vocab) == 2
    # blake2b, not Python's salted hash(): the same row in every process and after restarts.
    digest = hashlib.blake2b(b"c", digest_size=8).digest()
    assert overflow == int.from_bytes(digest, "little") % 2
    assert Vocabulary(2).row("zzz", grow=False) is None  # unseen, rows free, no growth asked
    restored = Vocabulary(2)
    restored.load_tensor(vocab.to_tensor())
    assert restored.ids == ["a", "b"] and restored.row("c") == overflow
    with pytest.raises(ValueError, match="capacity is 1"):
        Vocabulary(1).load_ids(["a", "b"])


def _rating_stream(count: int = 600) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    users = [f"u{u}" for u in rng.integers(0, 40, count)]
    items = [f"i{i}" for i in rng.integers(0, 30, count)]
    return users, items, rng.normal(3.5, 1.0, count).astype(np.float32)


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_numpy_row_steps_equal_torchs_optimiser(optimizer: str, monkeypatch) -> None:
    """models.sparse_rows steps SGD/Adagrad rows in numpy on CPU; torch's sparse path (what
    other optimisers and devices take) must give the same parameters."""
    import streaminfer.models.recommender as recommender

    users, items, y = _rating_stream()
    fast = create_model("recommender", optimizer=optimizer, user_capacity=64, item_capacity=64)
    slow = create_model("recommender", optimizer=optimizer, user_capacity=64, item_capacity=64)
    for lo in range(0, len(y), 50):
        part = Interactions(users[lo:lo + 50], items[lo:lo + 50])
        fast.learn(part, y[lo:lo + 50])
        with monkeypatch.context() as patched:
            patched.setattr(recommender, "sparse_apply", lambda *_: None)
            slow.learn(part, y[lo:lo + 50])
    assert slow.tables["user_emb"].weight.grad is not None  # it did take torch's path
    for key, value in fast.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.allclose(value, slow.state_dict()[key], atol=1e-5), key


def test_learn_steps_is_learn_on_each_run() -> None:
    users, items, y = _rating_stream()
    stepped = create_model("recommender", user_capacity=64, item_capacity=64)
    one_by_one = create_model("recommender", user_capacity=64, item_capacity=64)
    losses = stepped.learn_steps(Interactions(users, items), y, 32)
    expected = [one_by_one.learn(Interactions(users[lo:lo + 32], items[lo:lo + 32]),
                                 y[lo:lo + 32]) for lo in range(0, len(y), 32)]
    assert losses == pytest.approx(expected, rel=1e-5)
    assert stepped.version == one_by_one.version
    for key, value in stepped.state_dict().items():
        assert torch.allclose(value.double(), one_by_one.state_dict()[key].double(),
                              atol=1e-6), key


def test_seen_items_give_each_users_items_once_as_mask_pairs() -> None:
    from streaminfer.models.seen_items import SeenItems

    seen = SeenItems()
    seen.add([0, 0, 1, 0], [5, 2, 7, 5])  # user 0 rated item 5 twice
    seen.replace(2, [9, 1, 9])

    positions, items, counts = seen.pairs([0, None, 2, 1, 3], num_items=10)
    assert counts.tolist() == [2, 0, 2, 1, 0]
    pairs = list(zip(positions.tolist(), items.tolist(), strict=True))
    assert pairs == [(0, 5), (0, 2), (2, 9), (2, 1), (3, 7)]
    assert seen.pairs([2], num_items=5)[1].tolist() == [1]  # rows past the model's items
    assert seen.of(0) == {2, 5} and seen.of(4) == set()
