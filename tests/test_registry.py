"""The model registry on its three stores: immutable versions, labels, checksums, no pickle.

The S3 store is tested against moto's S3-compatible server, started here on a free port.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from click.testing import CliRunner

from streaminfer.connectors.params_publisher import ParamsPublisher
from streaminfer.connectors.registry_store import (
    DirectoryRegistryBlobs,
    RedisRegistryBlobs,
    S3RegistryBlobs,
)
from streaminfer.errors import RegistryError
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.registry import ModelRegistry
from streaminfer.streams.cli import main
from streaminfer.streams.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server_mod = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _s3(endpoint: str) -> S3RegistryBlobs:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    bucket = f"reg-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return S3RegistryBlobs(bucket, "models", client=client)


@pytest.fixture(params=["directory", "redis", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "directory":
        return ModelRegistry(DirectoryRegistryBlobs(tmp_path / "registry"))
    if request.param == "redis":
        client = request.getfixturevalue("redis_client")
        return ModelRegistry(RedisRegistryBlobs(client, prefix=f"reg-{uuid.uuid4().hex[:8]}"))
    return ModelRegistry(_s3(request.getfixturevalue("s3_endpoint")))


def _model(seed: int) -> OnlineClassifier:
    return OnlineClassifier(8, hidden=4, seed=seed, device="cpu")


def test_versions_are_numbered_immutable_and_load_verified(registry: ModelRegistry) -> None:
    a, b = _model(1), _model(2)
    assert registry.register("clf", a, metrics={"auc": 0.7}) == 1
    registry.promote("clf", 1)
    assert registry.register("clf", b) == 2
    assert registry.versions("clf") == [1, 2]
    assert "clf" in registry.names()
    manifest = registry.manifest("clf", 2)
    assert manifest["parent"] == 1 and manifest["metrics"] == {}
    assert manifest["model_class"].endswith("OnlineClassifier")
    assert manifest["tensors"]["net.body.0.weight"]["shape"] == [4, 8]
    # a version cannot be overwritten
    assert registry.blobs.create("clf", 2, b"x", "{}") is False

    target = _model(3)
    registry.load_into(target, "clf", 2)
    x = torch.randn(5, 8)
    assert torch.equal(target.predict(x), b.predict(x))
    assert str(target.version) == "v2+u0"
    assert registry.diff("clf", 1, 2)["net.body.0.weight"]["max_abs"] > 0


def test_labels_promote_and_rollback(registry: ModelRegistry) -> None:
    for seed in range(3):
        registry.register("clf", _model(seed))
    registry.promote("clf", 1)
    registry.promote("clf", 3)
    registry.label("clf", "shadow", 2)
    assert registry.labels("clf") == {"active": 3, "shadow": 2}
    assert registry.rollback("clf") == 1
    assert registry.rollback("clf", to=2) == 2
    registry.label("clf", "shadow", None)
    assert registry.labels("clf") == {"active": 2}
    with pytest.raises(RegistryError, match="no version 9"):
        registry.promote("clf", 9)


def test_corrupt_versions_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.register("clf", _model(1))
    weights, manifest = registry.blobs.read("clf", 1)
    # wrong sha256: the same manifest over other bytes
    flipped = bytearray(weights)
    flipped[-1] ^= 0xFF
    assert registry.blobs.create("clf", 2, bytes(flipped), manifest.replace('"version": 1',
                                                                             '"version": 2'))
    with pytest.raises(RegistryError, match="sha256"):
        registry.load_into(_model(0), "clf", 2)
    # wrong shapes: a model of another width
    registry.register("clf", OnlineClassifier(8, hidden=16, seed=0, device="cpu"))
    with pytest.raises(RegistryError, match="shape"):
        registry.load_into(_model(0), "clf", 3)


def test_cli_register_promote_rollback_export(tmp_path: Path) -> None:
    from streaminfer.models import checkpoint

    ckpt = checkpoint.save(_model(4), tmp_path / "ckpt")
    url = str(tmp_path / "registry")
    env = {"STREAMINFER_REGISTRY_URL": url, "STREAMINFER_HIDDEN": "4"}
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["model", *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert "v1 (active)" in run("register", "classifier", str(ckpt), "--promote")
    run("register", "classifier", str(ckpt))
    run("promote", "classifier", "2")
    assert "active -> v1" in run("rollback", "classifier")
    run("export", "classifier", "1", "--out", str(tmp_path / "m.pt2"))
    run("export", "classifier", "1", "--out", str(tmp_path / "m.pt"))
    assert "registered classifier v3" in run("register", "classifier", str(tmp_path / "m.pt2"))
    assert "registered classifier v4" in run("register", "classifier", str(tmp_path / "m.pt"))
    diff = run("diff", "classifier", "1", "3")
    assert '"max_abs": 0.0' in diff and "net.body.0.weight" in diff
    shown = json.loads(run("show", "classifier", "3"))
    assert shown["source"].endswith("m.pt2")
    target = _model(0)
    ModelRegistry(DirectoryRegistryBlobs(url)).load_into(target, "classifier", 4)
    x = torch.randn(3, 8)
    assert torch.allclose(target.predict(x), _model(4).predict(x))
    assert "v2" in run("list", "classifier")


def test_cli_registers_a_live_workers_published_parameters(
        tmp_path: Path, settings: Settings, redis_client: redis.Redis) -> None:
    """``register NAME params:APP:latest`` takes what a running worker last published to
    Redis (``ParamsPublisher``): the new version scores exactly as that model does."""
    live = _model(5)
    live.learn(torch.randn(16, 8).numpy(), torch.ones(16).numpy())
    app = f"live{uuid.uuid4().hex[:8]}"
    ParamsPublisher(redis_client, app).publish(live)
    url = str(tmp_path / "registry")
    env = {"STREAMINFER_REGISTRY_URL": url, "STREAMINFER_REDIS_URL": settings.redis_url}
    result = CliRunner().invoke(main, ["model", "register", "classifier", f"params:{app}:latest"],
                                env=env, catch_exceptions=False)
    assert result.exit_code == 0 and "registered classifier v1" in result.output, result.output
    registry = ModelRegistry(DirectoryRegistryBlobs(url))
    assert registry.manifest("classifier", 1)["source"] == f"params:{app}:latest"
    target = _model(0)
    registry.load_into(target, "classifier", 1)
    x = torch.randn(5, 8)
    assert torch.equal(target.predict(x), live.predict(x))
