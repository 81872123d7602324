"""Where the test session's Kafka broker and Redis server are, and how to start them.

A plain module (not the conftest) so test modules can import it by a name no other folder's
conftest shadows.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
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
