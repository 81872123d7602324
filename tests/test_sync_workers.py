"""Several workers learning one model: parameters in sync, accuracy of one (issue: sync).

Each scenario streams the same labelled events (each followed by its label) through real
worker processes and compares the progressive ROC AUC of the scores they served.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from sklearn.metrics import roc_auc_score
from workers import (
    deployment,
    publish_interleaved,
    wait_all_served,
    wait_for,
    worker_metrics_key,
)

from streaminfer.connectors.sources import SyntheticClassifier
from streaminfer.models.checkpoint_store import LocalCheckpointStore

pytestmark = pytest.mark.services
COUNT, RATE = 24000, 2000.0
# Progressive AUC depends on how many events are served between learning steps. Batches of at
# most 64 records bound that staleness, so the runs compare alike however loaded the machine
# is (uncapped, one worker's AUC ranged 0.910-0.922 under load; capped, 0.9221-0.9224).
LEARNING = {"STREAMINFER_BATCH_MAX_RECORDS": "64",
            "STREAMINFER_LEARN_BATCH_SIZE": "8", "STREAMINFER_OPTIMIZER": "sgd",
            "STREAMINFER_LR": "0.05", "STREAMINFER_SYNC_EVERY_MS": "100",
            "STREAMINFER_SYNC_EVERY_UPDATES": "20", "STREAMINFER_SYNC_ROUND_TIMEOUT_MS": "3000",
            "STREAMINFER_CHECKPOINT_EVERY_S": "3600"}


def stream() -> tuple[np.ndarray, np.ndarray]:
    events, labels = next(SyntheticClassifier(seed=11).chunks(COUNT, chunk=COUNT))
    return np.array([e["features"] for e in events], np.float32), labels


def metrics(client: redis.Redis, procs: list[Any]) -> list[dict[str, Any]]:
    raws = [client.get(worker_metrics_key("classifier", proc.pid)) for proc in procs]
    return [json.loads(raw) for raw in raws if raw]


def run(services: Any, new_topic: Any, client: redis.Redis, tmp_path: Path, *, workers: int,
        mode: str, kill_after_s: float | None = None) -> dict[str, Any]:
    """Stream the data through ``workers`` processes; returns served AUC and final params."""
    x, y = stream()
    with deployment(services, new_topic, tmp_path, partitions=6) as dep:
        dep.extra_env.update(LEARNING, STREAMINFER_SYNC_MODE=mode,
                             STREAMINFER_CHECKPOINT_URL=str(tmp_path / "ckpt"))
        procs = [dep.start_worker() for _ in range(workers)]
        dep.wait_ready(procs, client)
        tag = uuid.uuid4().hex[:8]
        sender = threading.Thread(target=publish_interleaved, args=(
            dep.bootstrap, dep.events_topic, dep.feedback_topic, x, y, tag, RATE, 60))
        sender.start()
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            victim = procs.pop(0)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        sender.join()
        served = {k: r["score"] for k, r in wait_all_served(
            dep, COUNT, 120, "every event predicted").items()}
        if mode == "sync":
            wait_for(lambda: all(m.get("learning", {}).get("sync", {}).get("settled")
                                 for m in metrics(client, procs)), 60,
                     "every worker to settle on the shared parameters", dep.log_tail)
        dep.stop_all()
        assert all(p.returncode == 0 for p in procs), dep.log_tail()
    ids = [f"{tag}-{i}" for i in range(COUNT)]
    store = LocalCheckpointStore(tmp_path / "ckpt")
    finals: dict[str, dict[str, torch.Tensor]] = {}
    for ref in reversed(store.refs("classifier")):  # oldest first: newest per worker wins
        model, manifest = store.load(ref, device="cpu")
        finals[manifest["worker"]] = model.state_dict()
    return {"auc": roc_auc_score(y, [served[i] for i in ids]), "params": finals}


def shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("net.")}


_BASELINES: dict[str, dict[str, Any]] = {}


def baseline(name: str, services: Any, new_topic: Any, client: redis.Redis,
             tmp_path_factory: pytest.TempPathFactory, **how: Any) -> dict[str, Any]:
    """A reference run, computed once per module and shared by the tests comparing to it."""
    if name not in _BASELINES:
        _BASELINES[name] = run(services, new_topic, client, tmp_path_factory.mktemp(name),
                               **how)
    return _BASELINES[name]


@pytest.fixture
def one_worker_auc(services: Any, new_topic: Any, redis_client: redis.Redis,
                   tmp_path_factory: pytest.TempPathFactory) -> float:
    """AUC of the same stream through one worker."""
    result = baseline("one", services, new_topic, redis_client, tmp_path_factory, workers=1,
                      mode="off")
    return float(result["auc"])


@pytest.fixture
def three_in_sync(services: Any, new_topic: Any, redis_client: redis.Redis,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same stream through three workers in sync mode, uninterrupted."""
    return baseline("sync3", services, new_topic, redis_client, tmp_path_factory, workers=3,
                    mode="sync")


def test_three_workers_in_sync_mode_hold_equal_parameters(
        three_in_sync: dict[str, Any], one_worker_auc: float) -> None:
    result = three_in_sync
    finals = [shared(p) for p in result["params"].values()]
    assert len(finals) == 3
    for other in finals[1:]:
        for name, tensor in finals[0].items():
            assert torch.equal(tensor, other[name]), name
    assert abs(result["auc"] - one_worker_auc) <= 0.005, (result["auc"], one_worker_auc)


def test_three_workers_in_async_mode_learn_as_well_as_one(
        services: Any, new_topic: Any, redis_client: redis.Redis, tmp_path: Path,
        one_worker_auc: float) -> None:
    result = run(services, new_topic, redis_client, tmp_path, workers=3, mode="async")
    assert abs(result["auc"] - one_worker_auc) <= 0.01, (result["auc"], one_worker_auc)


def test_killed_worker_in_sync_mode_loses_nothing(
        services: Any, new_topic: Any, redis_client: redis.Redis, tmp_path: Path,
        three_in_sync: dict[str, Any]) -> None:
    """Killed mid-stream: every event is predicted (``run`` waits for all) and the AUC is the
    uninterrupted one. (Killed in the first seconds, while the model still learns fast, the
    3 s sync-round stall alone costs up to ~0.008 AUC on a loaded machine.)"""
    result = run(services, new_topic, redis_client, tmp_path, workers=3, mode="sync",
                 kill_after_s=COUNT / RATE / 2)
    uninterrupted = three_in_sync["auc"]
    assert abs(result["auc"] - uninterrupted) <= 0.005, (result["auc"], uninterrupted)
