"""The fault suite: ``pytest -m faults`` runs it alone; every test here is marked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/workers.py


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="package")
def own_redis(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from harness import OwnRedis

    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def cluster(services, own_redis, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two learning workers shared by the fault tests (each test uses its own keys); a test
    that kills or freezes one leaves both running again."""
    from harness import Cluster

    checkpoints = tmp_path_factory.mktemp("ckpt")
    # a small filesystem of its own, so a test can fill it (root only; else that test skips)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                              str(checkpoints)], capture_output=True).returncode == 0
    made = Cluster(services.bootstrap, own_redis.url, tmp_path_factory.mktemp("cluster"),
                   env={"STREAMINFER_CHECKPOINT_URL": str(checkpoints),
                        "STREAMINFER_CHECKPOINT_EVERY_S": "2",
                        "STREAMINFER_MODEL_TIMEOUT_S": "2", "STREAMINFER_BREAKER_OPEN_S": "2",
                        "STREAMINFER_MAX_RECORD_BYTES": "1040000"})
    made.checkpoints = checkpoints  # type: ignore[attr-defined]
    made.checkpoints_mounted = mounted  # type: ignore[attr-defined]
    client = own_redis.client()
    made.start(2, client)
    yield made
    made.stop()
    client.close()
    if mounted:
        subprocess.run(["umount", str(checkpoints)], check=False)


@pytest.fixture
def client(own_redis):  # type: ignore[no-untyped-def]
    made = own_redis.client()
    yield made
    made.close()


@pytest.fixture(scope="package")
def eos_cluster(services, own_redis, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two learning workers with ``--processing-guarantee exactly-once``."""
    from harness import Cluster

    made = Cluster(services.bootstrap, own_redis.url, tmp_path_factory.mktemp("eos"),
                   env={"STREAMINFER_PROCESSING_GUARANTEE": "exactly-once"})
    client = own_redis.client()
    made.start(2, client)
    yield made
    made.stop()
    client.close()


@pytest.fixture
def eos_ready(eos_cluster, own_redis, client):  # type: ignore[no-untyped-def]
    return _healthy(eos_cluster, own_redis, client)


@pytest.fixture
def ready(cluster, own_redis, client):  # type: ignore[no-untyped-def]
    """The shared cluster, healthy: Redis up, chaos off, both workers sharing the partitions."""
    return _healthy(cluster, own_redis, client)


def _healthy(cluster, own_redis, client):  # type: ignore[no-untyped-def]
    if not own_redis.answers():
        own_redis.start()
    client.config_set("maxmemory", 0)
    cluster.chaos("")
    for proc in list(cluster.workers):
        if proc.poll() is not None:
            cluster.restart(proc)
    cluster.dep.wait_ready(cluster.workers, client, timeout=180)
    return cluster
