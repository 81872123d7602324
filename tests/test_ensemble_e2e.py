"""Acceptance: a real worker serves an ensemble of two registered versions, on real Kafka and
Redis.

The registry has v3 active and the ensemble ``[1, 2]`` with learnt weights; v1 is backwards
(it predicts the opposite of the label), v2 right. 1,000 events and their labels go in. A
user looks at ``pred:{app}:{key}`` and the predictions topic (every row stamped
``ens(v1,v2)``) and at the worker's metrics (the weights moved to v2).
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
from streaminfer.streams.wiring import registry_from_url
from tests.workers import (
    deployment,
    publish_interleaved,
    redis_predictions,
    wait_all_served,
    wait_for,
    worker_metrics_key,
)

pytestmark = pytest.mark.services

EVENTS = 1000
STAMP = "ens(v1,v2)"


def _ensemble(client: redis.Redis, pid: int) -> dict[str, Any]:
    raw = client.get(worker_metrics_key("classifier", pid))
    lifecycle = json.loads(raw).get("lifecycle", {}) if raw else {}
    return lifecycle.get("ensemble") or {}


def test_a_worker_serves_the_learnt_mean_of_two_versions(services: Any, new_topic: Any,
                                                         tmp_path: Path) -> None:
    url = str(tmp_path / "registry")
    registry = registry_from_url(url)
    for first in (-3.0, 3.0, 0.0):  # the label is the sign of feature 0
        model = OnlineClassifier(8, device="cpu")
        with torch.no_grad():
            model.net.body.weight.zero_()
            model.net.body.weight[0, 0] = first
        registry.register("classifier", model)
    registry.promote("classifier", 3)
    registry.set_ensemble("classifier", [1, 2], "learnt", eta=0.05)
    client = redis.Redis.from_url(services.redis_url)
    run = uuid.uuid4().hex[:6]
    with deployment(services, new_topic, tmp_path, partitions=2) as dep:
        dep.extra_env.update({"STREAMINFER_REGISTRY_URL": url,
                              "STREAMINFER_REGISTRY_POLL_S": "0.5"})
        proc = dep.start_worker()
        dep.wait_ready([proc], client)
        wait_for(lambda: _ensemble(client, proc.pid).get("stamp") == STAMP, 30,
                 "the ensemble loaded", dep.log_tail)
        x = np.random.default_rng(7).normal(size=(EVENTS, 8))
        ids = publish_interleaved(dep.bootstrap, dep.events_topic, dep.feedback_topic, x,
                                  (x[:, 0] > 0).astype(float), run, rate=1e9, keys=EVENTS)
        served = wait_all_served(dep, EVENTS, 60, f"{EVENTS} predictions on the topic")
        wait_for(lambda: _ensemble(client, proc.pid).get("labels") == EVENTS, 60,
                 f"the weights learnt from {EVENTS} labels", dep.log_tail)
        weights = _ensemble(client, proc.pid)["weights"]
    assert {served[i]["model_version"] for i in ids} == {STAMP}
    pred = redis_predictions(client, "classifier", [f"{run}-k{i}" for i in range(EVENTS)])
    assert len(pred) == EVENTS and {p["model_version"] for p in pred.values()} == {STAMP}
    print(f"\nlearnt weights after {EVENTS} labels: {weights}")
    assert weights["v2"] > 0.99 > 0.01 > weights["v1"]
