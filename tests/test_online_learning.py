"""Online learning through Kafka matches the same learner run in-process (issue: learning).

A real labelled stream shipped with a package (river's Phishing data set, 1250 rows) goes
through the broker as events, each followed by its label on the feedback topic; the worker
joins, learns, and serves. The progressive ROC AUC of the served scores must match a plain
in-process online logistic regression fed the same data in the same order.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from sklearn.metrics import roc_auc_score
from workers import deployment, publish_interleaved, wait_all_served

from streaminfer.models.base import ModelVersion
from streaminfer.models.factory import create_model

pytestmark = pytest.mark.services
river_datasets = pytest.importorskip("river.datasets")

LEARNING = {"STREAMINFER_NUM_FEATURES": "9", "STREAMINFER_LEARN_BATCH_SIZE": "1",
            "STREAMINFER_LEARN_MAX_STEPS": "0",
            "STREAMINFER_OPTIMIZER": "sgd", "STREAMINFER_LR": "0.1", "STREAMINFER_SEED": "7",
            "STREAMINFER_BATCH_MAX_WAIT_MS": "5"}


def phishing() -> tuple[np.ndarray, np.ndarray]:
    rows = list(river_datasets.Phishing())
    names = sorted(rows[0][0])
    x = np.array([[float(r[0][n]) for n in names] for r in rows], np.float32)
    y = np.array([float(r[1]) for r in rows], np.float32)
    return x, y


def reference_model() -> Any:
    return create_model("classifier", num_features=9, seed=7, optimizer="sgd", lr=0.1,
                        device="cpu")


def test_progressive_auc_matches_in_process_learner(services: Any, new_topic: Any,
                                                    redis_client: redis.Redis,
                                                    tmp_path: Path) -> None:
    x, y = phishing()
    with deployment(services, new_topic, tmp_path, partitions=1) as dep:
        dep.extra_env.update(LEARNING)
        worker = dep.start_worker()
        dep.wait_ready([worker], redis_client)
        run = uuid.uuid4().hex[:8]
        ids = publish_interleaved(dep.bootstrap, dep.events_topic, dep.feedback_topic, x, y,
                                  run, rate=150)
        predictions = wait_all_served(dep, len(ids), 60, "every event predicted")
        dep.stop_all()

    served = np.array([predictions[i]["score"] for i in ids])
    updates = [ModelVersion.parse(predictions[i]["model_version"]).updates for i in ids]
    pipeline_auc = roc_auc_score(y, served)

    # The same learner in-process, predicting each event after exactly as many labelled
    # examples (in the same order) as the served model had learned from.
    model = reference_model()
    learned, same_timing = 0, []
    for i, u in enumerate(updates):
        while learned < u:
            model.learn(x[learned : learned + 1], y[learned : learned + 1])
            learned += 1
        same_timing.append(float(model.predict(x[i : i + 1])[0]))
    assert abs(roc_auc_score(y, same_timing) - pipeline_auc) <= 0.005

    # And the textbook order: predict each event, then learn its label, before the next.
    model, sequential = reference_model(), []
    for i in range(len(y)):
        sequential.append(float(model.predict(x[i : i + 1])[0]))
        model.learn(x[i : i + 1], y[i : i + 1])
    sequential_auc = roc_auc_score(y, sequential)
    assert abs(sequential_auc - pipeline_auc) <= 0.01, (pipeline_auc, sequential_auc)
    assert max(updates) >= len(y) - 50  # the worker did learn (almost) every label
    print(f"\nphishing progressive AUC: pipeline {pipeline_auc:.4f}, in-process same timing "
          f"{roc_auc_score(y, same_timing):.4f}, sequential {sequential_auc:.4f}")


@pytest.mark.learning_quality
def test_defaults_reach_auc_095_at_2000_events_per_second(services: Any, new_topic: Any,
                                                          redis_client: redis.Redis,
                                                          tmp_path: Path) -> None:
    """What a new user gets: ``streaminfer worker --num-features 9``, every other setting at
    its default, the stream at 2,000 ev/s with each label right behind its event."""
    x, y = phishing()
    with deployment(services, new_topic, tmp_path, partitions=1) as dep:
        worker = dep.start_worker("--num-features", "9")
        dep.wait_ready([worker], redis_client)
        run = uuid.uuid4().hex[:8]
        ids = publish_interleaved(dep.bootstrap, dep.events_topic, dep.feedback_topic, x, y,
                                  run, rate=2000)
        predictions = wait_all_served(dep, len(ids), 60, "every event predicted")
        dep.stop_all()

    served = np.array([predictions[i]["score"] for i in ids])
    auc = roc_auc_score(y, served)
    steps = max(ModelVersion.parse(predictions[i]["model_version"]).updates for i in ids)
    per_version = Counter(predictions[i]["model_version"] for i in ids)
    sizes = sorted(per_version.values())
    print(f"\nphishing at defaults, 2000 ev/s: progressive AUC {auc:.4f}, {steps} steps, "
          f"{len(sizes)} model versions served, events per version: median "
          f"{sizes[len(sizes) // 2]}, max {sizes[-1]}")
    assert auc >= 0.950, (auc, steps, sizes)
