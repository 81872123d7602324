"""Checkpoint stores and live parameters as a worker taking over a partition sees them: save
with offsets, find the newest (from a fresh client, as another host would), load, score the same;
and ``params:{app}:latest`` as a reader outside the pipeline sees it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from servers import Services

from streaminfer.connectors.checkpoint_store import RedisCheckpointBlobs
from streaminfer.connectors.params_publisher import (
    ParamsPublisher,
    read_params,
    read_params_manifest,
)
from streaminfer.errors import CheckpointError
from streaminfer.models import Interactions, create_model
from streaminfer.models.base import Model
from streaminfer.models.checkpoint_store import (
    BlobCheckpointStore,
    CheckpointStore,
    LocalCheckpointStore,
)
from streaminfer.streams.wiring import store_from_url

REDIS_URL = "redis://127.0.0.1:6379/0"  # only parsed, never connected to


def _redis_store(client: redis.Redis) -> BlobCheckpointStore:
    return BlobCheckpointStore(RedisCheckpointBlobs(client))


@pytest.fixture
def app() -> str:
    """A fresh app name per test, so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def rds(app: str, services: Services) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis_url)
    yield client
    for pattern in (f"ckpt:{app}:*", f"ckpts:{app}", f"params:{app}:*"):
        keys = list(client.scan_iter(pattern, count=10_000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "local":
        return LocalCheckpointStore(tmp_path / "ckpts")
    return _redis_store(request.getfixturevalue("rds"))


@pytest.fixture
def reopen(request: pytest.FixtureRequest) -> Callable[[CheckpointStore], CheckpointStore]:
    """The same storage seen through a new store object (and connection): another host."""

    def again(store: CheckpointStore) -> CheckpointStore:
        if isinstance(store, BlobCheckpointStore):
            client = redis.Redis.from_url(request.getfixturevalue("services").redis_url)
            request.addfinalizer(client.close)
            return _redis_store(client)
        assert isinstance(store, LocalCheckpointStore)
        return LocalCheckpointStore(store.root)

    return again


def _classifier(steps: int = 5) -> Model:
    rng = np.random.default_rng(0)
    model = create_model("classifier", num_features=4, hidden=8, device="cpu")
    for _ in range(steps):
        x = rng.normal(loc=1.0, scale=2.0, size=(32, 4)).astype(np.float32)
        model.learn(x, (x[:, 0] > 1.0).astype(np.float32))
    return model


def test_round_trip_restores_scores_offsets_and_sync(
    store: CheckpointStore, app: str, reopen: Callable[[CheckpointStore], CheckpointStore]
) -> None:
    model = _classifier()
    offsets = {"events": {0: 1234, "1": 99}}
    sync = {"round": 7, "peers": ["w1", "w2"]}
    ref = store.save(
        model, {"app": app, "worker": "host-a", "offsets": offsets, "sync": sync, "note": "x"}
    )

    other = reopen(store)
    newest = other.latest(app)
    assert newest == ref
    restored, manifest = other.load(newest, device="cpu")
    x = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    assert torch.equal(model.predict(x), restored.predict(x))
    assert restored.version == model.version
    assert manifest["app"] == app and manifest["worker"] == "host-a" and manifest["note"] == "x"
    assert manifest["offsets"] == {"events": {"0": 1234, "1": 99}}  # JSON keys: strings
    assert manifest["sync"] == sync
    assert manifest["created_ms"] == ref.created_ms and manifest["id"] == ref.id
    assert manifest["model"]["name"] == "classifier"
    assert manifest["model"]["version"] == "v1+u5" and manifest["model"]["config"]["hidden"] == 8


def test_recommender_round_trip_keeps_vocab(store: CheckpointStore, app: str) -> None:
    model = create_model("recommender", user_capacity=16, item_capacity=16, device="cpu")
    batch = Interactions(["ann", "ann", "ben"], ["x", "y", "x"])
    for _ in range(3):
        model.learn(batch, [5.0, 1.0, 4.0])
    restored, manifest = store.load(store.save(model, {"app": app}), device="cpu")
    probe = Interactions(["ann", "ben", "newcomer"], ["y", "x", "x"])
    assert torch.equal(model.predict(probe), restored.predict(probe))
    assert manifest["model"]["vocab"] == {"users": ["ann", "ben"], "items": ["x", "y"]}


def test_newest_wins_and_prune_keeps_n(store: CheckpointStore, app: str) -> None:
    assert store.latest(app) is None
    model = _classifier(steps=1)
    refs = []
    for i in range(4):
        refs.append(store.save(model, {"app": app, "offsets": {"events": {"0": 100 * i}}}))
        model.learn(np.ones((2, 4), dtype=np.float32), [1.0, 0.0])
    assert [r.id for r in store.refs(app)] == [r.id for r in reversed(refs)]
    newest = store.latest(app)
    assert newest == refs[-1]
    _, manifest = store.load(newest, device="cpu")
    assert manifest["offsets"] == {"events": {"0": 300}} and manifest["model"]["updates"] == 4

    removed = store.prune(app, keep=2)
    assert sorted(removed) == sorted(r.id for r in refs[:2])
    assert [r.id for r in store.refs(app)] == [refs[3].id, refs[2].id]
    with pytest.raises(CheckpointError):
        store.load(refs[0])
    assert store.prune(app, keep=2) == []
    with pytest.raises(ValueError, match="keep must be >= 1"):
        store.prune(app, keep=0)


def test_apps_do_not_see_each_other(store: CheckpointStore, app: str) -> None:
    store.save(_classifier(steps=1), {"app": app})
    assert store.latest(app + "-other") is None


def test_bad_manifest_extra_is_refused(store: CheckpointStore, app: str) -> None:
    model = _classifier(steps=1)
    with pytest.raises(ValueError, match=r"offsets\['events'\]\['0'\] must be an int >= 0"):
        store.save(model, {"app": app, "offsets": {"events": {"0": -1}}})
    with pytest.raises(ValueError, match="app must match"):
        store.save(model, {"app": "a:b"})
    with pytest.raises(ValueError, match=r"must not set \['created_ms'\]"):
        store.save(model, {"app": app, "created_ms": 1})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        store.save(model, {"app": app, "sync": object()})
    assert store.latest(app) is None  # nothing half-written


def test_corrupt_local_checkpoint_gives_clear_error(tmp_path: Path, app: str) -> None:
    store = LocalCheckpointStore(tmp_path)
    ref = store.save(_classifier(steps=1), {"app": app})
    (Path(ref.location) / "classifier.safetensors").write_bytes(b"not tensors")
    with pytest.raises(CheckpointError, match=f"checkpoint {ref.location} cannot be loaded"):
        store.load(ref)


@pytest.mark.services
def test_corrupt_or_missing_redis_checkpoint_gives_clear_error(rds: redis.Redis, app: str) -> None:
    store = _redis_store(rds)
    model = _classifier(steps=1)
    older, newer = store.save(model, {"app": app}), store.save(model, {"app": app})
    assert rds.zcard(f"ckpts:{app}") == 2
    assert set(rds.hkeys(f"ckpt:{app}:{newer.id}")) == {b"state", b"manifest"}

    rds.hset(newer.location, "state", b"garbage")
    with pytest.raises(CheckpointError, match=rf"checkpoint ckpt:{app}:\S+ cannot be loaded"):
        store.load(newer)
    rds.delete(newer.location)  # the index still names it: latest skips it, load explains
    assert store.latest(app) == older
    with pytest.raises(CheckpointError, match="is missing from Redis"):
        store.load(newer)


def test_redis_store_needs_binary_client() -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisCheckpointBlobs(redis.Redis.from_url(REDIS_URL, decode_responses=True))


def test_store_from_url(tmp_path: Path) -> None:
    local = store_from_url(f"file://{tmp_path}/a")
    assert isinstance(local, LocalCheckpointStore) and local.root == tmp_path / "a"
    plain = store_from_url(tmp_path / "b")
    assert isinstance(plain, LocalCheckpointStore) and plain.root == tmp_path / "b"
    remote = store_from_url(REDIS_URL)
    assert isinstance(remote, BlobCheckpointStore)
    assert isinstance(remote.blobs, RedisCheckpointBlobs)
    with pytest.raises(ValueError, match="S3 checkpoint stores are not supported"):
        store_from_url("s3://bucket/ckpts")
    with pytest.raises(ValueError, match="must be a path, file:// or redis://"):
        store_from_url("ftp://host/x")


@pytest.mark.services
def test_params_publish_and_read_with_ttl(rds: redis.Redis, app: str) -> None:
    now = [100.0]
    publisher = ParamsPublisher(
        rds, app, every_s=5.0, ttl_s=600, worker="host-a", clock=lambda: now[0]
    )
    model = _classifier(steps=3)
    assert publisher.maybe_publish(model) == "v1+u3"
    assert rds.get(f"params:{app}:latest") == b"v1+u3"
    assert 590 <= rds.ttl(f"params:{app}:v1+u3") <= 600
    assert 590 <= rds.ttl(f"params:{app}:latest") <= 600

    tensors = read_params(rds, app)
    expected = model.state_dict()
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    manifest = read_params_manifest(rds, app)
    assert manifest["version"] == "v1+u3" and manifest["worker"] == "host-a"
    assert manifest["updates"] == 3 and manifest["config"]["num_features"] == 4

    model.learn(np.ones((2, 4), dtype=np.float32), [1.0, 0.0])
    now[0] += 1.0
    assert publisher.maybe_publish(model) is None  # too soon
    assert rds.get(f"params:{app}:latest") == b"v1+u3"
    now[0] += 5.0
    assert publisher.maybe_publish(model) == "v1+u4"
    assert read_params_manifest(rds, app)["version"] == "v1+u4"
    # An older version stays readable by name until it expires.
    assert torch.equal(read_params(rds, app, "v1+u3")["meta.updates"], torch.tensor(3))

    rds.expire(f"params:{app}:latest", 30)
    now[0] += 5.0
    assert publisher.maybe_publish(model) is None  # unchanged version: TTL refreshed only
    assert rds.ttl(f"params:{app}:latest") > 30


@pytest.mark.services
def test_read_params_when_nothing_published(rds: redis.Redis, app: str) -> None:
    with pytest.raises(LookupError, match=f"params:{app}:latest is absent or expired"):
        read_params(rds, app)
    with pytest.raises(LookupError, match="never published, or expired"):
        read_params(rds, app, "v1+u9")


@pytest.mark.services
def test_params_keep_only_the_newest_versions(rds: redis.Redis, app: str) -> None:
    publisher = ParamsPublisher(rds, app, every_s=0.0, ttl_s=600, keep=2)
    model = _classifier(steps=1)
    for _ in range(4):
        publisher.publish(model)
        model.learn(np.ones((2, 4), dtype=np.float32), [1.0, 0.0])
    kept = sorted(k.decode() for k in rds.keys(f"params:{app}:v1+u*"))
    assert kept == [f"params:{app}:v1+u3", f"params:{app}:v1+u4"]
    assert read_params_manifest(rds, app)["version"] == "v1+u4"
