"""The Kafka broker restarted mid-stream: a broker of the test's own (the project's script,
other ports and state directory), stopped for 5 s and started again while two learning
workers read a paced stream from it. The workers ride it out (librdkafka and aiokafka
reconnect); the lanes' writes retry until the broker is back; nothing is lost."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from harness import Cluster, free_port, settle

from streaminfer.connectors.admin import AdminError, ensure_topics

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "services.sh"
CRASH_DUPLICATES = 4 * 200


class OwnBroker:
    def __init__(self, state: Path) -> None:
        self.port = free_port()
        inherited = {k: v for k, v in os.environ.items()
                     if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL")}  # else the script uses those
        self.env = {**inherited, "STREAMINFER_STATE": str(state),
                    "STREAMINFER_KAFKA_PORT": str(self.port),
                    "STREAMINFER_KAFKA_CONTROLLER_PORT": str(free_port()),
                    "STREAMINFER_KAFKA_HEAP": "512m"}
        self.bootstrap = f"127.0.0.1:{self.port}"

    def run(self, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPT), *args, "kafka"], env=self.env, check=True,
                       timeout=180, capture_output=True)

    def wait_controller(self, timeout: float = 120) -> None:
        """Until the new broker's controller creates topics (it may lag its listener)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ensure_topics({"bootstrap.servers": self.bootstrap}, {"probe": 1})
                return
            except AdminError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    made = OwnBroker(tmp_path_factory.mktemp("kafka"))
    made.run("up")
    made.wait_controller()
    yield made
    made.run("down")


@pytest.mark.faults_long
def test_broker_restart_mid_stream(broker, own_redis, client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster(broker.bootstrap, own_redis.url, tmp_path / "cluster")
    try:
        cluster.start(2, client)
        stream = cluster.stream(6000, 300)
        time.sleep(6)
        broker.run("down")
        down = time.time()
        time.sleep(5)
        broker.run("up")
        back = time.time()
        out = settle(cluster, stream, client, "Kafka broker restarted (down 5 s)",
                     fault_end=back, dup_bound=CRASH_DUPLICATES, timeout=240,
                     extra={"broker_down_s": round(back - down, 1)})
        assert out.workers_running
    finally:
        cluster.stop()
