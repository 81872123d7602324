"""Checkpoints as a restarting worker sees them: save, find the newest, load, score the same."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streaminfer.models import (
    Interactions,
    MatrixFactorization,
    create_model,
    latest,
    load,
    prune,
    save,
)
from streaminfer.models.checkpoint import read_manifest


def _classifier(steps: int = 10):
    rng = np.random.default_rng(0)
    model = create_model("classifier", num_features=4, hidden=8, device="cpu")
    for _ in range(steps):
        x = rng.normal(loc=2.0, scale=3.0, size=(16, 4)).astype(np.float32)
        model.learn(x, (x[:, 0] > 2.0).astype(np.float32))
    return model


def test_classifier_round_trip_scores_identically(tmp_path: Path) -> None:
    model = _classifier()
    offsets = {"events": {"0": 1234, "1": 99}}
    path = save(model, tmp_path, {"offsets": offsets})
    assert path.parent == tmp_path and (path / "classifier.safetensors").is_file()

    restored, manifest = load(path, device="cpu")
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    assert torch.equal(model.predict(x), restored.predict(x))
    assert restored.version == model.version and manifest["version"] == "v1+u10"
    assert manifest["name"] == "classifier" and manifest["updates"] == 10
    assert manifest["config"]["hidden"] == 8 and manifest["extra"]["offsets"] == offsets
    # The restored model keeps learning from where the saved one stopped.
    restored.learn(x, np.zeros(50, dtype=np.float32))
    assert str(restored.version) == "v1+u11"


def test_recommender_round_trip_keeps_vocab_and_rankings(tmp_path: Path) -> None:
    model = create_model("recommender", user_capacity=16, item_capacity=16, device="cpu")
    assert isinstance(model, MatrixFactorization)
    batch = Interactions(["ann", "ann", "ben", "cy"], ["x", "y", "x", "z"])
    for _ in range(5):
        model.learn(batch, [5.0, 1.0, 4.0, 2.0])
    path = save(model, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["vocab"] == {"users": ["ann", "ben", "cy"], "items": ["x", "y", "z"]}

    restored, _ = load(path / "recommender.safetensors", device="cpu")
    assert isinstance(restored, MatrixFactorization)
    probe = Interactions(["ann", "cy", "newcomer"], ["z", "x", "y"])
    assert torch.equal(model.predict(probe), restored.predict(probe))
    assert restored.top_n("ben", 2) == model.top_n("ben", 2)


def test_files_are_plain_safetensors_and_json(tmp_path: Path) -> None:
    path = save(_classifier(steps=2), tmp_path)
    tensors = load_file(str(path / "classifier.safetensors"))  # no pickle involved
    assert "net.scaler.mean" in tensors and tensors["meta.updates"].item() == 2
    assert sorted(os.listdir(path)) == ["classifier.safetensors", "manifest.json"]


def test_latest_finds_newest_and_ignores_partial_writes(tmp_path: Path) -> None:
    assert latest(tmp_path) is None
    model = _classifier(steps=1)
    first = save(model, tmp_path)
    model.learn(np.zeros((1, 4), dtype=np.float32), [1.0])
    second = save(model, tmp_path)
    rec = save(create_model("recommender", user_capacity=4, item_capacity=4), tmp_path)
    (tmp_path / ".classifier-crashed.tmp").mkdir()  # what a writer killed mid-save leaves
    (tmp_path / "junk").mkdir()  # no manifest: not a checkpoint
    assert latest(tmp_path) == rec
    assert latest(tmp_path, "classifier") == second
    assert read_manifest(latest(tmp_path, "classifier"))["updates"] == 2

    removed = prune(tmp_path, keep=1, name="classifier")
    assert removed == [first] and not first.exists() and second.exists()


def test_bad_checkpoints_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        load(tmp_path)
    path = save(_classifier(steps=1), tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ValueError, match="format 99 is not supported"):
        load(path)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save(_classifier(steps=1), tmp_path / "other", {"when": object()})
    assert latest(tmp_path / "other") is None  # the failed save left nothing behind
