"""Hot swap in-process: the same ``streams.model_swap`` code path a worker runs, without Kafka.

A handler and a learner (with an async parameter sync on an in-memory log) serve a model; the
registry's ``active`` label moves; the swap must switch every holder between batches, refuse
corrupt versions while the old one keeps serving, keep sync deltas of different versions
apart, and leak nothing over many cycles.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from streaminfer.connectors.registry_store import DirectoryRegistryBlobs
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.registry import ModelRegistry
from streaminfer.models.sync import MemoryLog, create_sync
from streaminfer.models.sync.versioned import VersionedTransport
from streaminfer.streams.learning import Learner, LearnerHooks
from streaminfer.streams.model_swap import ModelSwap, SwapTargets

APP = "classifier"


class _Handler:
    """What the swap reads and writes of ``streams.handlers.AppHandler``."""

    def __init__(self, model: OnlineClassifier) -> None:
        self.model, self.int8 = model, None
        self.recent = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)


def _model(seed: int = 0, hidden: int = 4) -> OnlineClassifier:
    return OnlineClassifier(8, hidden=hidden, seed=seed, device="cpu")


def _setup(tmp_path: Path, log: MemoryLog | None = None, worker: str = "w1"
           ) -> tuple[ModelRegistry, ModelSwap, _Handler, Learner, CollectorRegistry]:
    registry = ModelRegistry(DirectoryRegistryBlobs(tmp_path / "registry"))
    if not registry.versions(APP):
        registry.register(APP, _model(1))
        registry.register(APP, _model(2))
        registry.promote(APP, 1)
    model = _model(0)
    obs = CollectorRegistry()
    targets = SwapTargets(threading.Lock(), handler=None)
    swap = ModelSwap(APP, registry, _model, targets, outputs=1, obs_registry=obs,
                     metrics_kind="classifier")
    assert swap.initial(model)
    handler = _Handler(model)
    sync = None
    if log is not None:
        sync = create_sync("async", model, transport=VersionedTransport(
            log.transport(), swap.tag() or "v1"), worker_id=worker, every_updates=1)
    from streaminfer.models.progressive import metrics_for

    learner = Learner(model, 16, LearnerHooks(progressive=metrics_for("classifier"), sync=sync))
    targets.handler, targets.learner = handler, learner
    return registry, swap, handler, learner, obs


def _count(obs: CollectorRegistry, result: str) -> float:
    return obs.get_sample_value("streaminfer_model_swaps_total",
                                {"app": APP, "result": result}) or 0.0


def test_promote_and_rollback_switch_every_holder(tmp_path: Path) -> None:
    registry, swap, handler, learner, obs = _setup(tmp_path, MemoryLog(2))
    assert str(handler.model.version) == "v1+u0"
    x = torch.randn(4, 8)
    assert swap.check_once() is None  # nothing moved
    registry.promote(APP, 2)
    assert swap.check_once() == "swapped"
    assert handler.model is learner.model and learner.hooks.sync.model is handler.model
    assert torch.equal(handler.model.predict(x), _model(2).predict(x))
    assert str(handler.model.version) == "v2+u0"
    learner._learn(np.ones((16, 8), np.float32), np.ones(16, np.float32), np.full(16, 0.5))
    assert str(handler.model.version) == "v2+u1"  # learning continues from the new version
    registry.rollback(APP)
    assert swap.check_once() == "swapped"
    assert str(handler.model.version) == "v1+u0"
    assert _count(obs, "swapped") == 2
    assert "v2" in swap.snapshot()["metrics_by_version"]
    assert swap.swaps[-1]["locked_s"] < 0.05


@pytest.mark.parametrize("corruption", ["sha256", "shapes", "nan"])
def test_corrupt_version_is_refused_and_old_keeps_serving(
        tmp_path: Path, corruption: str, caplog: pytest.LogCaptureFixture) -> None:
    registry, swap, handler, _, obs = _setup(tmp_path)
    if corruption == "sha256":
        weights, manifest = registry.blobs.read(APP, 2)
        bad = bytearray(weights)
        bad[-1] ^= 0x01
        registry.blobs.create(APP, 3, bytes(bad), manifest.replace('"version": 2',
                                                                   '"version": 3'))
    elif corruption == "shapes":
        registry.register(APP, _model(3, hidden=16))
    else:
        nan = _model(3)
        with torch.no_grad():
            nan.net.body[0].weight.fill_(float("nan"))
        registry.register(APP, nan)
    serving = handler.model
    registry.promote(APP, 3)
    with caplog.at_level(logging.ERROR):
        assert swap.check_once() == "refused"
    assert handler.model is serving and str(serving.version) == "v1+u0"
    assert _count(obs, "refused") == 1
    assert "v3 refused" in caplog.text
    expected = {"sha256": "sha256", "shapes": "shape", "nan": "NaN"}[corruption]
    assert expected in swap.refused[3]
    assert swap.check_once() is None  # not retried until the label moves
    registry.promote(APP, 2)
    assert swap.check_once() == "swapped"


def test_sync_never_mixes_deltas_of_two_versions(tmp_path: Path) -> None:
    log = MemoryLog(2)
    registry, swap_a, handler_a, learner_a, _ = _setup(tmp_path, log, "a")
    _, swap_b, handler_b, learner_b, _ = _setup(tmp_path, log, "b")
    x, y = np.ones((16, 8), np.float32), np.ones(16, np.float32)
    registry.promote(APP, 2)
    assert swap_a.check_once() == "swapped"  # a is on v2, b still on v1
    before_b = handler_b.model.net.body[0].weight.clone()
    learner_a._learn(x, y, np.full(16, 0.5))  # a publishes a v2 delta
    learner_b.idle()
    assert torch.equal(handler_b.model.net.body[0].weight, before_b), "v2 delta hit v1"
    learner_b._learn(x, y, np.full(16, 0.5))  # b publishes a v1 delta
    learner_a.idle()
    assert learner_a.hooks.sync.stats()["applied"] == 0
    # b swaps: the v2 delta it held back is applied to its v2 model
    assert swap_b.check_once() == "swapped"
    learner_b.idle()
    assert learner_b.hooks.sync.stats()["applied"] == 1
    assert torch.allclose(handler_b.model.net.body[0].weight,
                          handler_a.model.net.body[0].weight)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_fifty_promote_rollback_cycles_leak_nothing(tmp_path: Path) -> None:
    registry, swap, handler, _, _ = _setup(tmp_path, MemoryLog(2))
    rss, fds, threads = [], [], []
    for cycle in range(50):
        registry.promote(APP, 2)
        assert swap.check_once() == "swapped"
        registry.rollback(APP)
        assert swap.check_once() == "swapped"
        gc.collect()
        rss.append(_rss_mb())
        fds.append(len(os.listdir("/proc/self/fd")))
        threads.append(threading.active_count())
        if cycle == 4:
            base = (rss[-1], fds[-1], threads[-1])
    print(f"\nRSS after cycle 5: {base[0]:.1f} MB, after 50: {rss[-1]:.1f} MB "
          f"(growth {rss[-1] - base[0]:.1f} MB); fds {base[1]} -> {fds[-1]}; "
          f"threads {base[2]} -> {threads[-1]}")
    assert rss[-1] - base[0] < 50
    assert fds[-1] <= base[1] and threads[-1] <= base[2]
    assert str(handler.model.version) == "v1+u0"
