"""Shadow and canary in-process: the ``streams.model_swap`` watcher follows the labels and the
``streams.candidates`` code a lane runs, without Kafka (the worker end to end is in
``test_shadow_canary_e2e``)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from prometheus_client import CollectorRegistry

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.prediction import Predictions
from streaminfer.connectors.redis_sink import RedisPredictionSink
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.progressive import metrics_for
from streaminfer.streams.app import Learning
from streaminfer.streams.auto_guard import AutoGuard
from streaminfer.streams.batch import Batch
from streaminfer.streams.candidates import Candidates, canary_mask, key_share
from streaminfer.streams.learning import Learner, LearnerHooks
from streaminfer.streams.model_swap import ModelSwap, SwapTargets
from streaminfer.streams.observability import Observability
from streaminfer.streams.wiring import registry_from_url

APP = "clf"
KEY_SHARE_USER_1 = 0.974682


class _Handler:
    def __init__(self, model: OnlineClassifier) -> None:
        self.model, self.int8 = model, None
        self.recent = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)


def _model(seed: int) -> OnlineClassifier:
    return OnlineClassifier(8, hidden=4, seed=seed, device="cpu")


def _setup(tmp_path: Path, share: float = 0.0
           ) -> tuple[object, ModelSwap, _Handler, Learner, Candidates]:
    registry = registry_from_url(str(tmp_path / "registry"))
    for seed in (1, 2, 3):
        registry.register(APP, _model(seed))
    registry.promote(APP, 1)
    model = _model(0)
    candidates = Candidates(["score"], canary_share=share, metrics_kind="classifier",
                            served=Learning().served)
    targets = SwapTargets(threading.Lock(), handler=None, candidates=candidates)
    swap = ModelSwap(APP, registry, lambda: _model(0), targets, outputs=1,
                     obs_registry=CollectorRegistry(), metrics_kind="classifier")
    assert swap.initial(model)
    handler = _Handler(model)
    learner = Learner(model, 16, LearnerHooks(progressive=metrics_for("classifier"),
                                              candidates=candidates))
    targets.handler, targets.learner = handler, learner
    return registry, swap, handler, learner, candidates


def _batch(n: int, seed: int = 0, prefix: str = "k") -> Batch:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    keys = [f"{prefix}{i}" for i in range(n)]
    return Batch([], [f"e{i}" for i in range(n)], keys, np.arange(n, dtype=np.int64),
                 features=x)


def _served(handler: _Handler, batch: Batch) -> Predictions:
    scores = handler.model.predict(batch.features).numpy()
    return Predictions(batch.event_ids, batch.keys, {"score": scores.tolist()},
                       batch.ts.tolist(), 1, "clf", str(handler.model.version))


def test_shadow_follows_its_label_scores_beside_and_is_never_served(tmp_path: Path) -> None:
    registry, swap, handler, learner, candidates = _setup(tmp_path)
    batch = _batch(32)
    assert candidates.serve(batch, _served(handler, batch)) is None  # no shadow yet
    registry.label(APP, "shadow", 2)
    swap.check_once()
    assert candidates.shadow is not None and str(candidates.shadow.model.version) == "v2+u0"
    served = _served(handler, batch)
    active_scores = list(served.scores)
    shadow = candidates.serve(batch, served)
    assert shadow is not None and shadow.model_version == "v2+u0"
    assert served.scores == active_scores and served.versions is None  # served: v1 only
    expected = _model(2).predict(batch.features).numpy().tolist()
    assert np.allclose(shadow.scores, expected)
    # the same labels score both versions, then both learn from them
    y = (batch.features[:, 0] > 0).astype(np.float32)
    learner._learn(batch.features, y, np.asarray(active_scores, np.float32))
    versions = candidates.snapshot()
    assert versions["active v1"]["count"] == versions["shadow v2"]["count"] == 32
    assert versions["shadow v2"]["rows"] == 32
    assert str(candidates.shadow.model.version) == "v2+u2"  # 32 labels, steps of 16
    obs = Observability(APP, registry=CollectorRegistry())  # /metrics: labels by version
    obs.update_versions(versions)
    for role, version in (("active", "v1"), ("shadow", "v2")):
        labels = {"app": APP, "role": role, "version": version}
        assert obs.registry.get_sample_value("streaminfer_version_progressive",
                                             {**labels, "metric": "count"}) == 32
        assert obs.registry.get_sample_value("streaminfer_version_progressive",
                                             {**labels, "metric": "auc"}) == \
            versions[f"{role} {version}"]["auc"]
    assert obs.registry.get_sample_value("streaminfer_candidate_rows", {
        "app": APP, "role": "shadow", "version": "v2"}) == 32
    obs.update_versions({"active v1": versions["active v1"]})  # the shadow went away
    assert obs.registry.get_sample_value("streaminfer_candidate_rows", {
        "app": APP, "role": "shadow", "version": "v2"}) is None
    assert obs.registry.get_sample_value("streaminfer_version_progressive", {
        "app": APP, "role": "shadow", "version": "v2", "metric": "count"}) is None
    registry.label(APP, "shadow", None)
    swap.check_once()
    assert candidates.shadow is None and not candidates
    assert candidates.serve(batch, _served(handler, batch)) is None


def test_a_failing_shadow_is_counted_and_serving_goes_on(tmp_path: Path) -> None:
    registry, swap, handler, _, candidates = _setup(tmp_path)
    registry.label(APP, "shadow", 2)
    swap.check_once()
    assert candidates.shadow is not None
    with torch.no_grad():  # goes bad after it was loaded and validated
        candidates.shadow.model.net.body[0].weight.fill_(float("nan"))  # type: ignore[attr-defined]
    batch = _batch(16)
    served = _served(handler, batch)
    before = list(served.scores)
    assert candidates.serve(batch, served) is None
    assert served.scores == before
    assert candidates.shadow.errors == 1 and candidates.shadow.nan_rows == 16


def test_the_active_version_is_not_its_own_shadow_and_bad_candidates_are_refused(
        tmp_path: Path) -> None:
    registry, swap, _, _, candidates = _setup(tmp_path)
    registry.label(APP, "shadow", 1)  # the active version
    swap.check_once()
    assert candidates.shadow is None
    registry.register(APP, OnlineClassifier(8, hidden=16, seed=4, device="cpu"))
    registry.label(APP, "canary", 4)  # wrong shapes
    swap.check_once()
    assert candidates.canary is None and "shape" in swap.refused[4]


def test_canary_serves_its_keys_and_stamps_them(tmp_path: Path) -> None:
    registry, swap, handler, _, candidates = _setup(tmp_path, share=0.25)
    registry.label(APP, "canary", 3)
    swap.check_once()
    batch = _batch(400)
    served = _served(handler, batch)
    active = list(served.scores)
    kept = np.asarray(active, np.float32)  # what the learner keeps as served
    assert candidates.serve(batch, served, kept) is None  # a canary alone records nothing
    assert kept.tolist() == pytest.approx(served.scores)
    mask = canary_mask(batch.keys, 0.25)
    assert 60 < mask.sum() < 140
    assert served.versions is not None
    canary_scores = _model(3).predict(batch.features).numpy()
    for i in range(len(batch)):
        if mask[i]:
            assert served.versions[i] == "v3+u0"
            assert served.scores[i] == pytest.approx(float(canary_scores[i]))
        else:
            assert served.versions[i] == "v1+u0" and served.scores[i] == active[i]
    rows = served.rows()
    assert {r.model_version for r in rows} == {"v1+u0", "v3+u0"}


def test_key_share_is_stable_and_even() -> None:
    # a hash of the key's bytes: a fixed value on every host, whatever the hash seed
    assert key_share("user-1") == pytest.approx(KEY_SHARE_USER_1, abs=1e-6)
    keys = [f"user-{i}" for i in range(20_000)]
    share = canary_mask(keys, 0.1).mean()
    assert 0.09 < share < 0.11
    assert not canary_mask(keys, 0.0).any() and canary_mask(keys, 1.0).all()


def test_per_row_versions_reach_redis_and_shadow_keys_are_their_own(
        services: object) -> None:
    client = redis.Redis.from_url(services.redis_url)  # type: ignore[attr-defined]
    served = RedisPredictionSink(client, "cmp")
    shadow = RedisPredictionSink(client, "cmp", kind="shadow")
    batch = Predictions(["e1", "e2"], ["a", "b"], {"score": [0.1, 0.2]}, [5, 5], 9, "m",
                        "v1+u0", versions=["v1+u0", "v3+u0"])
    served.write_packed(served.pack_columns(batch))
    assert client.hget("pred:cmp:a", "model_version") == b"v1+u0"
    assert client.hget("pred:cmp:b", "model_version") == b"v3+u0"
    other = Predictions(["e1"], ["a"], {"score": [0.7]}, [5], 9, "m", "v2+u0")
    shadow.write_packed(shadow.pack_columns(other))
    assert client.hgetall("shadow:cmp:a")[b"model_version"] == b"v2+u0"
    assert client.hget("pred:cmp:a", "score") == b"0.1"
    older = Predictions(["e0"], ["a"], {"score": [0.9]}, [4], 9, "m", "v2+u0")
    shadow.write_packed(shadow.pack_columns(older))  # the same event-time guard
    assert client.hget("shadow:cmp:a", "score") == b"0.7"


def _weights(model: OnlineClassifier, first: float) -> OnlineClassifier:
    with torch.no_grad():
        model.net.body.weight.zero_()  # type: ignore[attr-defined]
        model.net.body.weight[0, 0] = first  # type: ignore[attr-defined]
    return model


def test_auto_guard_promotes_a_better_shadow_and_drops_a_failing_canary(
        tmp_path: Path) -> None:
    registry = registry_from_url(str(tmp_path / "registry"))
    registry.register(APP, _weights(OnlineClassifier(8, device="cpu"), -3.0))  # v1: backwards
    registry.register(APP, _weights(OnlineClassifier(8, device="cpu"), 3.0))   # v2: right
    registry.register(APP, OnlineClassifier(8, device="cpu"))                   # v3
    registry.promote(APP, 1)
    registry.label(APP, "shadow", 2)
    registry.label(APP, "canary", 3)
    candidates = Candidates(["score"], canary_share=0.5, metrics_kind="classifier",
                            served=Learning().served)
    obs = CollectorRegistry()
    targets = SwapTargets(threading.Lock(), handler=None, candidates=candidates)
    guard = AutoGuard(APP, registry, "classifier", min_labels=500, margin=0.05,
                      obs_registry=obs)
    swap = ModelSwap(APP, registry, lambda: OnlineClassifier(8, device="cpu"), targets,
                     outputs=1, obs_registry=obs, metrics_kind="classifier", auto_guard=guard)
    model = OnlineClassifier(8, device="cpu")
    assert swap.initial(model)
    handler = _Handler(model)
    learner = Learner(model, 16, LearnerHooks(candidates=candidates))
    targets.handler, targets.learner = handler, learner
    swap.check_once()
    assert candidates.shadow is not None and candidates.canary is not None
    with torch.no_grad():  # the canary goes bad after it was validated
        candidates.canary.model.net.body.weight.fill_(float("nan"))  # type: ignore[attr-defined]

    def labelled(n: int, seed: int) -> None:
        batch = _batch(n, seed)
        candidates.serve(batch, _served(handler, batch))
        y = (batch.features[:, 0] > 0).astype(np.float32)
        learner._learn(batch.features, y, np.zeros(n, np.float32))

    labelled(300, 1)  # under min_labels: the shadow is better, but not judged yet
    swap.check_once()
    assert [d["decision"] for d in guard.decisions] == ["rollback"]  # the NaN canary
    assert "canary" not in registry.labels(APP) and registry.labels(APP)["shadow"] == 2
    swap.check_once()
    assert candidates.canary is None
    labelled(300, 2)
    swap.check_once()  # 600 labels: v2's AUC beats v1's over the same labels
    assert [d["decision"] for d in guard.decisions] == ["rollback", "promote"]
    assert registry.labels(APP) == {"active": 2}
    assert swap.check_once() == "swapped" and str(handler.model.version) == "v2+u0"
    assert candidates.shadow is None
    for decision in ("rollback", "promote"):
        role = "canary" if decision == "rollback" else "shadow"
        assert obs.get_sample_value("streaminfer_auto_guard_decisions_total", {
            "app": APP, "decision": decision, "role": role}) == 1


def test_per_row_versions_reach_the_predictions_topic_records() -> None:
    codec = RecordCodec("prediction")
    batch = Predictions(["e1", "e2"], ["a", "b"], {"score": [0.1, 0.2]}, [5, 5], 9, "m",
                        "v1+u0", versions=["v1+u0", "v3+u0"])
    records = [codec.decode(value) for value in codec.encode_columns(*batch.columns())]
    assert [r["model_version"] for r in records] == ["v1+u0", "v3+u0"]
    assert [r["model_version"] for r in batch.records()] == ["v1+u0", "v3+u0"]
