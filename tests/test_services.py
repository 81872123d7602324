"""``streaminfer dev up|status|down``: real processes, found and stopped by PID, nothing else
touched.

The lifecycle test runs a second, isolated Kafka + Redis (own ports and state directory), so it
never disturbs the shared services other tests use.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from servers import Services, kafka_answers, redis_answers, state_dir

from streaminfer.streams.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    """Running and not a zombie (a reaped-later zombie is as stopped as a user can tell)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pids(state: Path) -> tuple[int, int]:
    return (
        int((state / "kafka/kafka.pid").read_text()),
        int((state / "redis/redis.pid").read_text()),
    )


def _dev(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(main, ["dev", *args], env=env, catch_exceptions=False)


@pytest.fixture
def bystander() -> Iterator[int]:
    """An unrelated process whose PID ends up in stale pid files: it must survive `down`."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[tuple[dict[str, str | None], Path]]:
    """Env for a private instance; always torn down, even when the test fails half-way."""
    state = tmp_path / "state"
    env: dict[str, str | None] = {
        "STREAMINFER_STATE": str(state),
        "STREAMINFER_KAFKA_PORT": str(_free_port()),
        "STREAMINFER_KAFKA_CONTROLLER_PORT": str(_free_port()),
        "STREAMINFER_REDIS_PORT": str(_free_port()),
        "STREAMINFER_KAFKA_HEAP": "512m",
        "KAFKA_BOOTSTRAP": None,
        "REDIS_URL": None,
    }
    yield env, state
    _dev(env, "down")


def test_isolated_instance_up_twice_status_and_down(
    isolated: tuple[dict[str, str | None], Path], bystander: int
) -> None:
    env, state = isolated
    kafka_port = int(env["STREAMINFER_KAFKA_PORT"] or 0)
    redis_port = int(env["STREAMINFER_REDIS_PORT"] or 0)
    bootstrap = f"127.0.0.1:{kafka_port}"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    # Stale pid files left by a crash whose PID now belongs to someone else.
    for name in ("kafka", "redis"):
        (state / name).mkdir(parents=True)
        (state / name / f"{name}.pid").write_text(f"{bystander}\n")

    first = _dev(env, "up")
    assert first.exit_code == 0, first.output
    assert f"KAFKA_BOOTSTRAP={bootstrap}" in first.output
    assert f"REDIS_URL={redis_url}" in first.output
    assert (state / "env").read_text() == f"KAFKA_BOOTSTRAP={bootstrap}\nREDIS_URL={redis_url}\n"
    kafka_pid, redis_pid = _pids(state)
    assert bystander not in (kafka_pid, redis_pid)
    assert kafka_answers(bootstrap) and redis_answers(redis_url)

    second = _dev(env, "up")
    assert second.exit_code == 0, second.output
    assert "already running" in second.output
    assert _pids(state) == (kafka_pid, redis_pid)

    status = _dev(env, "status")
    assert status.exit_code == 0, status.output
    assert f"kafka  running  pid {kafka_pid}  {bootstrap}" in status.output
    assert f"redis  running  pid {redis_pid}  {redis_url}" in status.output

    # Redis keeps what was written (appendonly) across a restart.
    client = redis.Redis.from_url(redis_url)
    client.set("durable", "yes")
    client.close()
    assert _dev(env, "down", "redis").exit_code == 0
    assert not _alive(redis_pid)
    assert _dev(env, "up", "redis").exit_code == 0
    client = redis.Redis.from_url(redis_url)
    assert client.get("durable") == b"yes"
    client.close()
    redis_pid = _pids(state)[1]

    down = _dev(env, "down")
    assert down.exit_code == 0, down.output
    assert not _alive(kafka_pid) and not _alive(redis_pid)
    assert not _port_open(kafka_port) and not _port_open(redis_port)
    assert _alive(bystander)

    stopped = _dev(env, "status")
    assert stopped.exit_code == 3
    assert "kafka  stopped" in stopped.output and "redis  stopped" in stopped.output


def test_dev_up_leaves_running_shared_services_alone(services: Services) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP") or os.environ.get("REDIS_URL"):
        pytest.skip("services are external (KAFKA_BOOTSTRAP / REDIS_URL set)")
    state = state_dir()
    if not (state / "kafka/kafka.pid").is_file() or not (state / "redis/redis.pid").is_file():
        pytest.skip(f"shared services were not started by services.sh with state in {state}")
    before = _pids(state)

    result = _dev({}, "up")

    assert result.exit_code == 0, result.output
    assert result.output.count("already running") == 2
    assert _pids(state) == before
    assert all(_alive(pid) for pid in before)


def test_external_servers_are_used_not_started(services: Services, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env: dict[str, str | None] = {
        "STREAMINFER_STATE": str(state),
        "KAFKA_BOOTSTRAP": services.bootstrap,
        "REDIS_URL": services.redis_url,
    }

    result = _dev(env, "up")

    assert result.exit_code == 0, result.output
    assert "started nothing" in result.output
    assert not (state / "kafka/kafka.pid").exists() and not (state / "redis/redis.pid").exists()
    assert f"KAFKA_BOOTSTRAP={services.bootstrap}" in (state / "env").read_text()
