"""A planted checkpoint, registry version or model file can corrupt a model, never run code.

Each test puts an attacker's file where streaminfer expects weights and checks the load is
refused with a streaminfer error, and that the payload (creating a marker file) never ran.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from streaminfer.errors import CheckpointError, ModelError, RegistryError
from streaminfer.models import checkpoint
from streaminfer.models.checkpoint_store import LocalCheckpointStore
from streaminfer.models.module import FileModel, TorchModel
from streaminfer.models.registry import MemoryBlobs, ModelRegistry
from streaminfer.models.weights import load_weights, sha256_hex


class _Payload:
    """Unpickling this runs ``touch marker``: what a malicious ``torch.save`` file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the planted pickle ran"


def _pickle_file(path: Path, marker: Path) -> Path:
    torch.save({"net.weight": _Payload(marker)}, path)
    return path


def _model() -> TorchModel:
    return TorchModel(nn.Linear(3, 1), name="lin")


def _absurd_safetensors() -> bytes:
    """A header claiming a 2**40 x 2**40 float tensor, backed by 16 bytes."""
    header = json.dumps({"net.weight": {"dtype": "F32", "shape": [2**40, 2**40],
                                        "data_offsets": [0, 16]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(16)


def test_checkpoint_whose_tensors_file_is_a_pickle_is_refused(tmp_path: Path,
                                                              marker: Path) -> None:
    ckpt = checkpoint.save(_model(), tmp_path / "ckpts")
    _pickle_file(ckpt / "lin.safetensors", marker)
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint.load_into(_model(), ckpt)
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())
    manifest.pop("sha256")  # an attacker who rewrites the manifest too
    (ckpt / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.load_into(_model(), ckpt)


def test_store_refuses_a_pickled_checkpoint(tmp_path: Path, marker: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    ref = store.save(_model(), {"app": "lin"})
    _pickle_file(Path(ref.location) / "lin.safetensors", marker)
    with pytest.raises(CheckpointError, match=re.escape(ref.location)):
        store.load(ref, device="cpu", into=_model())


def test_manifest_cannot_point_outside_the_checkpoint(tmp_path: Path) -> None:
    ckpt = checkpoint.save(_model(), tmp_path / "ckpts")
    shutil.copy(ckpt / "lin.safetensors", tmp_path / "elsewhere.safetensors")
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())
    manifest["tensors"] = "../../elsewhere.safetensors"
    (ckpt / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"only a \*.safetensors file inside"):
        checkpoint.load_into(_model(), ckpt)


def test_checkpoint_with_a_changed_byte_is_refused(tmp_path: Path) -> None:
    ckpt = checkpoint.save(_model(), tmp_path)
    weights = ckpt / "lin.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 of the weights is"):
        checkpoint.load(ckpt, device="cpu")


def test_checkpoint_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    model = _model()
    ckpt = checkpoint.save(model, tmp_path)
    with pytest.raises(CheckpointError, match="over the limit of 100"):
        checkpoint.load_into(model, ckpt, max_bytes=100)
    manifest, data = checkpoint.save_bytes(model)
    with pytest.raises(CheckpointError, match="over the limit of 100"):
        checkpoint.load_bytes(manifest, data, into=model, max_bytes=100)
    assert checkpoint.load_into(_model(), ckpt)["sha256"] == checkpoint.read_manifest(ckpt)[
        "sha256"]  # under the limit, the same checkpoint loads


def test_registry_version_that_is_a_pickle_is_refused(tmp_path: Path, marker: Path) -> None:
    registry = ModelRegistry(MemoryBlobs())
    version = registry.register("lin", _model())
    payload = _pickle_file(tmp_path / "evil.pt", marker).read_bytes()
    _, text = registry.blobs.data[("lin", version)]
    manifest = {**json.loads(text), "sha256": sha256_hex(payload)}  # a consistent forgery
    registry.blobs.data[("lin", version)] = (payload, json.dumps(manifest))
    with pytest.raises(RegistryError, match="not a safetensors file"):
        registry.load_into(_model(), "lin", version)


def test_registry_refuses_a_sha256_mismatch_and_a_version_without_one() -> None:
    registry = ModelRegistry(MemoryBlobs())
    version = registry.register("lin", _model())
    weights, text = registry.blobs.data[("lin", version)]
    registry.blobs.data[("lin", version)] = (weights[:-1] + b"\x00", text)
    with pytest.raises(RegistryError, match="sha256 of the weights is"):
        registry.get("lin", version)
    manifest = json.loads(text)
    del manifest["sha256"]
    registry.blobs.data[("lin", version)] = (weights, json.dumps(manifest))
    with pytest.raises(RegistryError, match="manifest says None"):
        registry.get("lin", version)


def test_registry_refuses_an_absurd_shape_and_an_oversized_version() -> None:
    absurd = _absurd_safetensors()
    with pytest.raises(ModelError, match=r"'net.weight' claims shape \[1099511627776"):
        load_weights(absurd, where="planted")
    registry = ModelRegistry(MemoryBlobs(), max_bytes=200)
    version = registry.register("lin", TorchModel(nn.Linear(64, 1), name="lin"))
    with pytest.raises(RegistryError, match="over the limit of 200"):
        registry.get("lin", version)
    _, text = registry.blobs.data[("lin", version)]
    forged = {**json.loads(text), "sha256": sha256_hex(absurd)}
    registry.blobs.data[("lin", version)] = (absurd, json.dumps(forged))
    registry.max_bytes = 10**9
    with pytest.raises(RegistryError, match="claims shape"):
        registry.get("lin", version)


def _torchscript_with_pickle(tmp_path: Path, marker: Path) -> Path:
    """A real TorchScript archive whose ``data.pkl`` is replaced by the payload."""
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 1)), str(good))
    evil = tmp_path / "evil_script.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Payload(marker), protocol=2)
            dst.writestr(item, data)
    return evil


@pytest.mark.parametrize("kind", ["torch.save .pt", "torch.save .pt2", "torchscript"])
def test_model_file_with_a_pickle_payload_is_refused(tmp_path: Path, marker: Path,
                                                     kind: str) -> None:
    if kind == "torchscript":
        path = _torchscript_with_pickle(tmp_path, marker)
    else:
        path = _pickle_file(tmp_path / f"evil.{kind.rsplit('.', 1)[1]}", marker)
    with pytest.raises(ModelError, match=f"cannot load model file {path}"):
        FileModel(path, device="cpu")


def test_model_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ModelError, match="over the limit of 1024"):
        FileModel(path, device="cpu", max_bytes=1024)
