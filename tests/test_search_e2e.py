"""Acceptance: an online hyperparameter search through a real worker, restarted halfway.

v1 ranks backwards (its weight on the deciding feature is negative) and the worker learns
with SGD at lr 0.001, so only a fast learner turns it round within a few hundred labels. Of
four learning rates the fastest must rank first on the leaderboard, the leaderboard must keep
the first worker's labels across a restart, and the winner must be registered, promoted and
served. About a minute and a half (two worker starts); alone: ``pytest -m lifecycle_long``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

from streaminfer.models.classifier import OnlineClassifier
from streaminfer.streams.search import leaderboard, start_search
from streaminfer.streams.wiring import registry_from_url
from tests.workers import (
    deployment,
    publish_interleaved,
    stop_processes,
    wait_for,
    worker_metrics_key,
)

pytestmark = [pytest.mark.services, pytest.mark.lifecycle_long]


def _labelled(dep: Any, n: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, 8))
    publish_interleaved(dep.bootstrap, dep.events_topic, dep.feedback_topic, x,
                        (x[:, 0] > 0).astype(float), uuid.uuid4().hex[:6], 2000, keys=50)


def _labels_on_board(client: redis.Redis) -> float:
    rows = leaderboard(client, "classifier")["rows"]
    return min((r["count"] for r in rows), default=0.0)


def test_search_ranks_the_best_rate_first_keeps_its_board_and_promotes_it(
        services: Any, new_topic: Any, tmp_path: Path) -> None:
    url = str(tmp_path / "registry")
    registry = registry_from_url(url)
    start = OnlineClassifier(8, device="cpu", optimizer="sgd", lr=0.001)
    with torch.no_grad():
        start.net.body.weight.zero_()
        start.net.body.weight[0, 0] = -2.0
    registry.register("classifier", start)
    registry.promote("classifier", 1)
    client = redis.Redis.from_url(services.redis_url)
    with deployment(services, new_topic, tmp_path) as dep:
        dep.extra_env.update({"STREAMINFER_REGISTRY_URL": url, "STREAMINFER_LR": "0.001",
                              "STREAMINFER_OPTIMIZER": "sgd",
                              "STREAMINFER_REGISTRY_POLL_S": "0.5"})
        first = dep.start_worker()
        dep.wait_ready([first], client)
        start_search(client, "classifier", "lr=0.001,0.01,0.1,1.0", min_labels=1500,
                     margin=0.05)
        wait_for(lambda: client.hlen("search:classifier:board") > 0, 30, "the search to start",
                 dep.log_tail)
        _labelled(dep, 800, seed=1)
        wait_for(lambda: _labels_on_board(client) >= 800, 60, "800 labels on the board",
                 dep.log_tail)
        board = leaderboard(client, "classifier")
        assert [r["params"] for r in board["rows"]][:1] == ["lr=1.0"], board["rows"]
        assert registry.active("classifier") == 1  # under --min-labels: no winner yet

        stop_processes([first])  # a restart: the board keeps what the first worker counted
        second = dep.start_worker()
        dep.wait_ready([second], client)
        assert _labels_on_board(client) >= 800
        _labelled(dep, 1500, seed=2)
        wait_for(lambda: registry.active("classifier") == 2, 90, "the winner promoted",
                 dep.log_tail)

        def serving() -> str:
            raw = client.get(worker_metrics_key("classifier", second.pid))
            return json.loads(raw)["model_version"] if raw else ""

        wait_for(lambda: serving().startswith("v2+"), 30, "v2 served", dep.log_tail)
    board = leaderboard(client, "classifier")
    spec = board["search"]
    print("\nleaderboard:", [(r["params"], int(r["count"]), round(r["auc"], 3))
                             for r in board["rows"]], "winner", spec.get("winner"))
    assert spec["done"] and spec["winner"] == "lr=1.0" and spec["promoted"] == 2
    assert board["rows"][0]["params"] == "lr=1.0" and board["rows"][0]["count"] >= 1500
    assert registry.manifest("classifier", 2)["metrics"]["params"] == "lr=1.0"
