"""Checkpoints: a restarted worker continues from the newest one and replays only the tail."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from workers import deployment, publish_interleaved, read_topic, wait_for

from streaminfer.connectors.sources import SyntheticClassifier
from streaminfer.models.base import ModelVersion
from streaminfer.models.checkpoint_store import LocalCheckpointStore

pytestmark = pytest.mark.services
LEARNING = {"STREAMINFER_LEARN_BATCH_SIZE": "4", "STREAMINFER_OPTIMIZER": "sgd",
            "STREAMINFER_LR": "0.05"}


def _stream(count: int, seed: int) -> tuple[Any, Any]:
    import numpy as np

    events, labels = next(SyntheticClassifier(seed=seed).chunks(count, chunk=count))
    return np.array([e["features"] for e in events], np.float32), labels


def _versions(records: list[dict[str, Any]], ids: list[str]) -> list[int]:
    by_id = {r["event_id"]: r for r in records}
    return [ModelVersion.parse(by_id[i]["model_version"]).updates for i in ids if i in by_id]


def test_clean_restart_continues_from_the_shutdown_checkpoint(
        services: Any, new_topic: Any, redis_client: redis.Redis, tmp_path: Path) -> None:
    store_dir = tmp_path / "ckpt"
    with deployment(services, new_topic, tmp_path, partitions=1) as dep:
        dep.extra_env.update(LEARNING, STREAMINFER_CHECKPOINT_URL=str(store_dir))
        first = dep.start_worker()
        dep.wait_ready([first], redis_client)
        x, y = _stream(1000, seed=3)
        ids = publish_interleaved(dep.bootstrap, dep.events_topic, dep.feedback_topic, x, y,
                                  uuid.uuid4().hex[:8], rate=800)
        wait_for(lambda: len(read_topic(dep.bootstrap, dep.predictions_topic, idle_s=1.0))
                 >= len(ids), 60, "every event predicted", dep.log_tail)
        time.sleep(1.5)  # the last labels are joined and learned after their events
        dep.stop_all()  # SIGTERM: the worker checkpoints on the way out
        assert first.returncode == 0, dep.log_tail()

        store = LocalCheckpointStore(store_dir)
        ref = store.latest("classifier")
        assert ref is not None
        model, manifest = store.load(ref, device="cpu")
        assert model.version.updates > 0
        assert manifest["offsets"][dep.events_topic] == {"0": len(ids)}
        assert manifest["offsets"][dep.feedback_topic] == {"0": len(ids)}
        assert manifest["metrics"]["count"] > 0  # progressive metrics continue after restore

        second = dep.start_worker()
        dep.wait_ready([second], redis_client)
        more = publish_interleaved(dep.bootstrap, dep.events_topic, dep.feedback_topic, x[:50],
                                   y[:50], uuid.uuid4().hex[:8], rate=200)
        records: list[dict[str, Any]] = []

        def new_ones_predicted() -> bool:
            records[:] = read_topic(dep.bootstrap, dep.predictions_topic, idle_s=1.0)
            return len(_versions(records, more)) == len(more)

        wait_for(new_ones_predicted, 60, "the new events predicted", dep.log_tail)
        assert min(_versions(records, more)) >= model.version.updates  # not a fresh model
        counts = Counter(r["event_id"] for r in records)
        assert max(counts[i] for i in ids) == 1  # nothing before the checkpoint is redone


def test_killed_worker_restores_the_newest_checkpoint_and_replays_only_the_tail(
        services: Any, new_topic: Any, redis_client: redis.Redis, tmp_path: Path) -> None:
    store_dir = tmp_path / "ckpt"
    with deployment(services, new_topic, tmp_path, partitions=1) as dep:
        dep.extra_env.update(LEARNING, STREAMINFER_CHECKPOINT_URL=str(store_dir),
                             STREAMINFER_CHECKPOINT_EVERY_S="1")
        victim = dep.start_worker()
        dep.wait_ready([victim], redis_client)
        x, y = _stream(3000, seed=5)
        tag = uuid.uuid4().hex[:8]
        sender = threading.Thread(target=publish_interleaved, args=(
            dep.bootstrap, dep.events_topic, dep.feedback_topic, x, y, tag, 600.0))
        sender.start()
        time.sleep(3.0)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        ref = LocalCheckpointStore(store_dir).latest("classifier")
        assert ref is not None, "no periodic checkpoint before the kill"
        _, manifest = LocalCheckpointStore(store_dir).load(ref, device="cpu")
        checkpoint_offset = manifest["offsets"][dep.events_topic]["0"]
        sender.join()

        survivor = dep.start_worker()
        ids = [f"{tag}-{i}" for i in range(len(y))]
        records: list[dict[str, Any]] = []

        def all_predicted() -> bool:
            records[:] = read_topic(dep.bootstrap, dep.predictions_topic, idle_s=1.0)
            return {r["event_id"] for r in records} >= set(ids)

        wait_for(all_predicted, 120, "every event predicted after the restart", dep.log_tail)
        assert survivor.poll() is None
        counts = Counter(r["event_id"] for r in records)
        redone = [i for i, event_id in enumerate(ids) if counts[event_id] > 1]
        assert all(i >= checkpoint_offset for i in redone), (checkpoint_offset, redone[:5])
        assert checkpoint_offset > 0
