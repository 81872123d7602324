"""``streaminfer dev``: start, stop and inspect the real local Kafka broker and Redis server.

A thin wrapper over ``deploy/local/services.sh`` so the script stays usable without Python
(CI, a fresh machine) and the CLI stays the one place users look.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import click

__all__ = ["SERVICES_SCRIPT", "dev"]

SERVICES_SCRIPT = Path(__file__).resolve().parents[2] / "deploy/local/services.sh"

_ENV_HELP = """
\b
Environment:
  STREAMINFER_CACHE   jar cache [~/.cache/streaminfer]
  STREAMINFER_STATE   data, logs, pid files, env file [$STREAMINFER_CACHE/state]
  STREAMINFER_KAFKA_VERSION, STREAMINFER_KAFKA_PORT, STREAMINFER_REDIS_PORT
  STREAMINFER_KAFKA_CLUSTER_PORT  --brokers 3: brokers on PORT..PORT+2 [29092]
  STREAMINFER_REDIS_CLUSTER_PORT  --redis-cluster: nodes on PORT..PORT+5 [17001]
  KAFKA_BOOTSTRAP / REDIS_URL   use these servers and start nothing
  KAFKA_HOME          use $KAFKA_HOME/libs jars instead of fetching with Maven
"""


def _run(ctx: click.Context, command: str, services: tuple[str, ...],
         brokers: int | None = None, redis_cluster: bool = False) -> None:
    """Run the script, relaying its output through click so it shows wherever click writes."""
    if not SERVICES_SCRIPT.is_file():
        raise click.ClickException(f"services script not found at {SERVICES_SCRIPT}")
    env = dict(os.environ)
    # Global --bootstrap / --redis-url mean "use that server": the script then starts nothing.
    obj = ctx.find_root().obj or {}
    if obj.get("bootstrap_servers"):
        env["KAFKA_BOOTSTRAP"] = obj["bootstrap_servers"]
    if obj.get("redis_url"):
        env["REDIS_URL"] = obj["redis_url"]
    with subprocess.Popen(
        ["bash", str(SERVICES_SCRIPT), command, *services,
         *(["--brokers", str(brokers)] if brokers else []),
         *(["--redis-cluster"] if redis_cluster else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            click.echo(line, nl=False)
    ctx.exit(proc.returncode)


_SERVICES = click.argument(
    "services", nargs=-1, type=click.Choice(["kafka", "redis"]), metavar="[kafka|redis]..."
)


def _clusters(command: Any) -> Any:
    command = click.option(
        "--redis-cluster", is_flag=True,
        help="A local Redis Cluster instead: 3 masters + 1 replica each (Debian's "
        "redis-server in cluster mode, `redis-cli --cluster create`), 127.0.0.1:17001-17006; "
        "its URL goes to $STREAMINFER_STATE/env.cluster.")(command)
    return click.option(
        "--brokers", type=click.Choice(["3"]), default=None,
        help="A local 3-broker Kafka cluster instead: 3 KRaft nodes, each broker and "
        "controller, 127.0.0.1:29092-29094, replication 3 and min.insync.replicas 2 by "
        "default.")(command)


@click.group(epilog=_ENV_HELP)
def dev() -> None:
    """Real local services: Apache Kafka (single node, KRaft) and Redis on 127.0.0.1.

    \b
      streaminfer dev up       # fetch Kafka with Maven once, start both
      streaminfer dev status
      streaminfer dev down
      streaminfer dev up --brokers 3 --redis-cluster   # clusters, beside the above
    """


@dev.command(epilog=_ENV_HELP)
@_SERVICES
@_clusters
@click.pass_context
def up(ctx: click.Context, services: tuple[str, ...], brokers: str | None,
       redis_cluster: bool) -> None:
    """Start Kafka (127.0.0.1:9092) and Redis (127.0.0.1:6379) unless already running.

    Safe to run again: services it started earlier are found by PID and left alone. The first
    run fetches the broker jars from Maven Central (needs `mvn` and Java 17). Prints, and
    writes to $STREAMINFER_STATE/env, the KAFKA_BOOTSTRAP and REDIS_URL to use.

    With --brokers 3 and/or --redis-cluster it starts those clusters instead (on their own
    ports and directories, beside the single-node services) and writes their addresses to
    $STREAMINFER_STATE/env.cluster. Run it again to restart a node that died.
    """
    _run(ctx, "up", services, int(brokers) if brokers else None, redis_cluster)


@dev.command(epilog=_ENV_HELP)
@_SERVICES
@_clusters
@click.pass_context
def down(ctx: click.Context, services: tuple[str, ...], brokers: str | None,
       redis_cluster: bool) -> None:
    """Stop the processes `dev up` started (by PID; SIGKILL after 30 s); data is kept."""
    _run(ctx, "down", services, int(brokers) if brokers else None, redis_cluster)


@dev.command(epilog=_ENV_HELP)
@_SERVICES
@_clusters
@click.pass_context
def status(ctx: click.Context, services: tuple[str, ...], brokers: str | None,
       redis_cluster: bool) -> None:
    """Show each service as running/stopped with its pid and address; exit 3 unless all run."""
    _run(ctx, "status", services, int(brokers) if brokers else None, redis_cluster)


@dev.command(epilog=_ENV_HELP)
@click.confirmation_option(prompt="Stop the services and delete their topics and keys?")
@click.pass_context
def reset(ctx: click.Context) -> None:
    """Stop the services and delete their data (topics, offsets, Redis keys); jars are kept."""
    _run(ctx, "reset", ())
