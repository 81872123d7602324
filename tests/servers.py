"""Where the test session's Kafka broker and Redis server are, and how to start them.

A plain module (not the conftest) so test modules can import it by a name no other folder's
conftest shadows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from certs import TlsFiles
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parents[1]
SERVICES_SCRIPT = REPO / "deploy/local/services.sh"
# Where services.sh puts them unless told otherwise (same env vars as the script).
DEFAULT_BOOTSTRAP = f"127.0.0.1:{os.environ.get('STREAMINFER_KAFKA_PORT', '9092')}"
DEFAULT_REDIS_URL = f"redis://127.0.0.1:{os.environ.get('STREAMINFER_REDIS_PORT', '6379')}/0"
#: Tests use this database of the dev Redis (not of one given by REDIS_URL), emptied before
#: and after the session; the benchmarks use 14, the demo 0.
TEST_REDIS_DB = 15


@dataclass(frozen=True)
class Services:
    """Where the session's Kafka broker and Redis server answer."""

    bootstrap: str
    redis_url: str


def state_dir() -> Path:
    """The services script's state directory, by the same rules as the script."""
    cache = Path(os.environ.get("STREAMINFER_CACHE", Path.home() / ".cache/streaminfer"))
    return Path(os.environ.get("STREAMINFER_STATE", cache / "state"))


def _env_file() -> dict[str, str]:
    path = state_dir() / "env"
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def kafka_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except Exception:
        return False


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def run_services(command: str, *names: str, env: dict[str, str] | None = None) -> str:
    """Run ``services.sh COMMAND [NAMES]``; fail the test with its output if it fails."""
    proc = subprocess.run(
        ["bash", str(SERVICES_SCRIPT), command, *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0 and not (command == "status" and proc.returncode == 3):
        pytest.fail(
            f"services.sh {command} {' '.join(names)} exited {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout + proc.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(0.1)


class OwnRedis:
    """A throwaway redis-server (no persistence) on a port of its own, that a test may stop and
    start again. With ``tls`` it listens on TLS only (``rediss://``, clients trust ``tls.ca``);
    with ``password`` the ``default`` user needs it."""

    def __init__(self, workdir: Path, password: str | None = None,
                 tls: TlsFiles | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.tls = tls
        auth = f":{password}@" if password else ""
        self.url = self.url_for(auth)

    def url_for(self, auth: str = "") -> str:
        """This server's URL with ``auth`` (``user:password@``) in it."""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"

    def client(self) -> redis.Redis:
        """A client of the ``default`` user (the admin)."""
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)

    def start(self) -> None:
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                     "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        subprocess.run(["redis-server", *ports, "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--daemonize", "yes",
                        "--dir", str(self.workdir),
                        "--pidfile", str(self.workdir / "redis.pid"),
                        "--logfile", str(self.workdir / "redis.log"),
                        *(["--requirepass", self.password] if self.password else [])],
                       check=True)
        client = self.client()
        _wait(lambda: _pings(client), f"redis-server on port {self.port}")

    def stop(self) -> None:
        pidfile = self.workdir / "redis.pid"
        if pidfile.is_file():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        _wait(lambda: not _pings(self.client()), f"redis-server on port {self.port} to stop")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
