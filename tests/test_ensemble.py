"""Ensembles in-process: the registry names the members, the ``streams.model_swap`` watcher
loads them, and the handler a lane runs serves their weighted mean (``streams.ensemble``),
without Kafka."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from streaminfer.errors import RegistryError
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.progressive import metrics_for, row_losses
from streaminfer.streams.app import Learning, Outputs
from streaminfer.streams.batch import Batch
from streaminfer.streams.candidates import Candidates
from streaminfer.streams.cli import main
from streaminfer.streams.ensemble import Ensemble
from streaminfer.streams.handlers import AppHandler
from streaminfer.streams.learning import Learner, LearnerHooks
from streaminfer.streams.model_swap import ModelSwap, SwapTargets
from streaminfer.streams.wiring import registry_from_url

APP = "clf"


def _model(first: float | None = None, hidden: int | None = None) -> OnlineClassifier:
    """A linear classifier; ``first``: its only weight, on feature 0 (the label's sign)."""
    model = OnlineClassifier(8, device="cpu", **({"hidden": hidden} if hidden else {}))
    if first is not None:
        with torch.no_grad():
            model.net.body.weight.zero_()  # type: ignore[attr-defined]
            model.net.body.weight[0, 0] = first  # type: ignore[attr-defined]
    return model


def _setup(tmp_path: Path) -> tuple[object, ModelSwap, AppHandler, Learner, Candidates]:
    """v1 is backwards, v2 right, v3 half as sure as v2; v3 is active."""
    registry = registry_from_url(str(tmp_path / "registry"))
    for first in (-3.0, 3.0, 1.5):
        registry.register(APP, _model(first))
    registry.promote(APP, 3)
    candidates = Candidates(["score"], metrics_kind="classifier", served=Learning().served)
    targets = SwapTargets(threading.Lock(), handler=None, candidates=candidates)
    swap = ModelSwap(APP, registry, _model, targets, outputs=1,
                     obs_registry=CollectorRegistry(), metrics_kind="classifier")
    model = _model()
    assert swap.initial(model)
    handler = AppHandler(model, decoder=None, features=None,  # type: ignore[arg-type]
                         outputs_spec=Outputs(), candidates=candidates)
    handler.recent = _batch(64, 99).features
    learner = Learner(model, 16, LearnerHooks(progressive=metrics_for("classifier"),
                                              candidates=candidates))
    targets.handler, targets.learner = handler, learner
    return registry, swap, handler, learner, candidates


def _batch(n: int, seed: int = 0) -> Batch:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return Batch([], [f"e{i}" for i in range(n)], [f"k{i}" for i in range(n)],
                 np.arange(n, dtype=np.int64), features=x)


def _labelled(handler: AppHandler, learner: Learner, n: int, seed: int) -> None:
    """A batch served, then its labels (the sign of feature 0) learnt from."""
    batch = _batch(n, seed)
    served = handler.score(batch)
    learner._learn(batch.features, (batch.features[:, 0] > 0).astype(np.float32), served)


def _predict(first: float, batch: Batch) -> np.ndarray:
    return _model(first).predict(batch.features).numpy()


def test_learnt_weights_move_to_the_better_member_and_serve_its_mean(tmp_path: Path) -> None:
    registry, swap, handler, learner, candidates = _setup(tmp_path)
    registry.set_ensemble(APP, [2, 1], "learnt", eta=0.05)
    swap.check_once()
    ensemble = candidates.ensemble
    assert ensemble is not None and ensemble.numbers == [1, 2]
    batch = _batch(32, 1)
    scores = handler.score(batch)
    # before any label the weights are equal: the plain mean, stamped with both members
    expected = (_predict(-3.0, batch) + _predict(3.0, batch)) / 2
    assert scores == pytest.approx(expected, abs=1e-6)
    written = handler.outputs(batch, scores, 1)
    assert written.predictions.model_version == "ens(v1,v2)"
    assert {r.model_version for r in written.predictions.rows()} == {"ens(v1,v2)"}

    for seed in range(2, 12):  # 320 labels: v1 is backwards, so its weight falls
        _labelled(handler, learner, 32, seed)
    weights = ensemble.weights()
    assert weights[1] > 0.95 > 0.05 > weights[0]
    assert swap.snapshot()["ensemble"]["weights"]["v2"] == pytest.approx(weights[1], abs=1e-5)
    # served: the weighted mean of the members (which learnt too) with the learnt weights
    batch = _batch(32, 50)
    members = [m.model.predict(batch.features).numpy() for m in ensemble.members]
    assert handler.score(batch) == pytest.approx(
        weights[0] * members[0] + weights[1] * members[1], abs=1e-6)
    # every member and the ensemble itself are judged on the same labels as the active one
    versions = candidates.snapshot()
    assert versions["active v3"]["count"] == versions["ensemble v1"]["count"] == \
        versions["ensemble v2"]["count"] == versions["ensemble ens(v1,v2)"]["count"] == 320
    assert versions["ensemble ens(v1,v2)"]["logloss"] < versions["ensemble v1"]["logloss"]
    assert str(ensemble.members[1].model.version) == "v2+u20"  # members learn (steps of 16)


def test_equal_weights_are_the_plain_mean_whatever_the_losses(tmp_path: Path) -> None:
    registry, swap, handler, learner, candidates = _setup(tmp_path)
    registry.set_ensemble(APP, [1, 2, 3], "equal")
    swap.check_once()
    for seed in range(5):
        _labelled(handler, learner, 32, seed)
    assert candidates.ensemble is not None
    assert candidates.ensemble.weights() == pytest.approx([1 / 3] * 3)
    batch = _batch(16, 60)
    members = [m.model.predict(batch.features).numpy() for m in candidates.ensemble.members]
    assert handler.score(batch) == pytest.approx(sum(members) / 3, abs=1e-6)
    assert handler.serving_version() == "ens(v1,v2,v3)"


def test_hedge_weights_follow_the_discounted_loss() -> None:
    ensemble = Ensemble([object(), object()], "learnt", eta=0.5,  # type: ignore[list-item]
                        kind="classifier")
    y = np.ones(4, np.float32)
    ensemble.observe([np.full(4, 0.9), np.full(4, 0.6)], y)
    gap = 4 * (np.log(0.9) - np.log(0.6))  # member 0's loss is lower by this much
    assert ensemble.weights()[0] == pytest.approx(1 / (1 + np.exp(-0.5 * gap)))
    ensemble.observe([np.full(1000, 0.6), np.full(1000, 0.6)], np.ones(1000, np.float32))
    gap *= 0.999 ** 1000  # the old lead fades, equal losses since add nothing to it
    assert ensemble.weights()[0] == pytest.approx(1 / (1 + np.exp(-0.5 * gap)))
    assert row_losses("recommender", [1.0, 3.0], [2.0, 2.0]).tolist() == [1, 1]
    assert row_losses("multiclass", [1.0, 2.0], [1.0, 0.0]).tolist() == [0, 1]


def test_a_failing_member_is_left_out_and_a_refused_ensemble_never_serves(
        tmp_path: Path) -> None:
    registry, swap, handler, _, candidates = _setup(tmp_path)
    registry.register(APP, _model(hidden=16))  # v4: another architecture
    registry.set_ensemble(APP, [2, 4])
    swap.check_once()
    assert candidates.ensemble is None and "does not fit" in swap.refused[4]
    batch = _batch(16, 3)
    assert handler.outputs(batch, handler.score(batch), 1).predictions.model_version == \
        "v3+u0"

    registry.set_ensemble(APP, [1, 2])
    swap.check_once()
    assert candidates.ensemble is not None
    with torch.no_grad():  # v1 goes bad after it was loaded and validated
        candidates.ensemble.members[0].model.net.body.weight.fill_(float("nan"))  # type: ignore[attr-defined]
    scores = handler.score(batch)
    assert scores == pytest.approx(_predict(3.0, batch), abs=1e-6)
    assert handler.serving_version() == "ens(v2)"
    assert candidates.ensemble.members[0].nan_rows == 16
    # the next refused ensemble leaves this one serving
    registry.set_ensemble(APP, [2, 4])
    swap.check_once()
    assert candidates.ensemble is not None and candidates.ensemble.numbers == [1, 2]

    registry.set_ensemble(APP, None)
    swap.check_once()
    assert candidates.ensemble is None and not candidates
    handler.score(batch)
    assert handler.serving_version() == "v3+u0"


def test_members_kept_across_a_new_ensemble_keep_what_they_learnt(tmp_path: Path) -> None:
    registry, swap, handler, learner, candidates = _setup(tmp_path)
    registry.set_ensemble(APP, [1, 2])
    swap.check_once()
    _labelled(handler, learner, 32, 1)
    assert candidates.ensemble is not None
    kept = candidates.ensemble.members[1]
    registry.set_ensemble(APP, [2, 3], "equal")
    swap.check_once()
    assert candidates.ensemble.numbers == [2, 3]
    assert candidates.ensemble.members[0] is kept and str(kept.model.version) == "v2+u2"
    assert candidates.ensemble.weighting == "equal"


def test_registry_and_cli_set_show_and_end_an_ensemble(tmp_path: Path) -> None:
    url = str(tmp_path / "registry")
    registry = registry_from_url(url)
    for first in (1.0, 2.0):
        registry.register(APP, _model(first))
    registry.promote(APP, 1)
    for bad in ([1], [1, 9]):
        with pytest.raises(RegistryError):
            registry.set_ensemble(APP, bad)
    runner = CliRunner()
    out = runner.invoke(main, ["model", "ensemble", APP, "2", "1", "--weights", "equal",
                               "--registry", url])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"members": [1, 2], "weights": "equal", "eta": 0.05}
    assert registry.ensemble(APP) == {"members": [1, 2], "weights": "equal", "eta": 0.05}
    assert registry.labels(APP) == {"active": 1}  # labels still name one version each
    registry.label(APP, "shadow", 2)
    assert registry.ensemble(APP) is not None
    out = runner.invoke(main, ["model", "ensemble", APP, "--off", "--registry", url])
    assert out.exit_code == 0 and json.loads(out.output) is None
    assert [h["label"] for h in registry.history(APP)][-3:] == ["ensemble", "shadow",
                                                                 "ensemble"]
