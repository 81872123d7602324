"""Online hyperparameter search in-process: the watcher and learners a worker runs
(``streams.search`` through ``streams.model_swap``), with real Redis for the leaderboard."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from streaminfer.errors import ConfigError
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.streams.app import Learning
from streaminfer.streams.candidates import Candidates
from streaminfer.streams.cli import main
from streaminfer.streams.learning import Learner, LearnerHooks
from streaminfer.streams.model_swap import ModelSwap, SwapTargets
from streaminfer.streams.search import LiveSearch, leaderboard, parse_grid, start_search
from streaminfer.streams.wiring import registry_from_url

APP = "searched"


def _build(point: dict[str, Any]) -> OnlineClassifier:
    return OnlineClassifier(8, device="cpu", **{"optimizer": "sgd", **point})


class _Worker:
    """What a worker runs for a search: the swap watcher, the learner and its candidates."""

    def __init__(self, registry: Any, client: redis.Redis, worker_id: str) -> None:
        model = _build({"lr": 0.001})  # the active version learns slowly
        self.candidates = Candidates(["score"], metrics_kind="classifier",
                                     served=Learning().served)
        targets = SwapTargets(threading.Lock(), handler=None, candidates=self.candidates)
        self.search = LiveSearch(APP, client, registry, _build, worker_id, "classifier")
        self.swap = ModelSwap(APP, registry, lambda: _build({"lr": 0.001}), targets,
                              outputs=1, obs_registry=CollectorRegistry(),
                              metrics_kind="classifier", search=self.search)
        assert self.swap.initial(model)
        self.handler = type("H", (), {"model": model, "int8": None, "recent": None})()
        self.learner = Learner(model, 16, LearnerHooks(candidates=self.candidates))
        targets.handler, targets.learner = self.handler, self.learner

    def labels(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(n // 100):
            x = rng.normal(size=(100, 8)).astype(np.float32)
            y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.float32)
            self.learner._learn(x, y, np.zeros(100, np.float32))


def test_parse_grid() -> None:
    assert parse_grid("lr=0.01,0.1;l2=0,1e-4") == [
        {"lr": 0.01, "l2": 0.0}, {"lr": 0.01, "l2": 1e-4}, {"lr": 0.1, "l2": 0.0},
        {"lr": 0.1, "l2": 1e-4}]
    with pytest.raises(ConfigError, match="NAME one of"):
        parse_grid("momentum=0.9")
    with pytest.raises(ConfigError, match="1 to 8"):
        parse_grid("lr=1,2,3;l2=0,1,2")


def test_the_best_learning_rate_ranks_first_survives_a_restart_and_is_promoted(
        services: Any, tmp_path: Path) -> None:
    client = redis.Redis.from_url(services.redis_url)
    registry = registry_from_url(str(tmp_path / "registry"))
    start = _build({"lr": 0.001})
    with torch.no_grad():  # v1 ranks backwards: only a fast learner turns it round soon
        start.net.body.weight.fill_(0.0)
        start.net.body.weight[0, 0] = -2.0
    registry.register(APP, start)
    registry.promote(APP, 1)
    first = _Worker(registry, client, "w1")
    start_search(client, APP, "lr=0.0001,0.001,0.01,1.0", min_labels=800, margin=0.02)
    first.swap.check_once()
    assert [c.params for c in first.candidates.search] == [
        "lr=0.0001", "lr=0.001", "lr=0.01", "lr=1.0"]
    first.labels(500, seed=1)
    first.swap.check_once()  # publishes; 500 labels < 800: no winner yet
    board = leaderboard(client, APP)
    assert board["rows"][0]["params"] == "lr=1.0"
    same = next(r for r in board["rows"] if r["params"] == "lr=0.001")
    assert same["auc"] == same["active"]["auc"]  # the active's lr, the same labels: a tie
    assert board["rows"][0]["count"] == 500 and registry.active(APP) == 1

    # a restart: a new worker (new id) starts its learners afresh; the board keeps the old
    del first
    second = _Worker(registry, client, "w2")
    second.swap.check_once()
    assert len(second.candidates.search) == 4
    assert leaderboard(client, APP)["rows"][0]["count"] == 500
    second.labels(400, seed=2)
    second.swap.check_once()  # 900 labels over both: lr=1.0 wins and is promoted
    assert registry.active(APP) == 2
    manifest = registry.manifest(APP, 2)
    assert manifest["metrics"]["params"] == "lr=1.0" and manifest["parent"] == 1
    assert second.swap.check_once() == "swapped"
    assert str(second.handler.model.version) == "v2+u0" and second.candidates.search == []
    assert second.handler.model.lr == 1.0  # the winner keeps learning at the rate it won with
    second.swap.registry.rollback(APP)
    assert second.swap.check_once() == "swapped"
    assert second.handler.model.lr == 0.001  # v1 was not a search's: the worker's own rate

    result = CliRunner().invoke(main, ["model", "search", APP, "--status"],
                                env={"REDIS_URL": services.redis_url},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "lr=1.0 promoted as v2" in lines[0]
    assert lines[2].split("\t")[:3] == ["1", "lr=1.0", "900"]
