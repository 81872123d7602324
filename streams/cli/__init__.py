"""The ``streaminfer`` command line: the user's API, so its help text is documentation."""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["main"]

# subcommand name -> module under streams.cli that defines a click command of that name.
_SUBCOMMANDS = {
    "dev": "dev",
    "topics": "topics",
    "produce": "produce",
    "consume": "consume",
    "worker": "worker",
    "demo": "demo",
    "init": "init",
    "model": "model",
}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when it runs, so ``--help`` stays fast (no torch)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _SUBCOMMANDS:
            return None
        try:
            module = importlib.import_module(f"streaminfer.streams.cli.{_SUBCOMMANDS[name]}")
        except ModuleNotFoundError as exc:
            if exc.name == f"streaminfer.streams.cli.{_SUBCOMMANDS[name]}":
                return None
            raise
        return getattr(module, name.replace("-", "_"))


def _parse_property(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    props: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx, param)
        props[key.strip()] = value
    return props


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bootstrap",
    "bootstrap_servers",
    metavar="HOST:PORT[,..]",
    help="Kafka bootstrap servers [env STREAMINFER_BOOTSTRAP_SERVERS or KAFKA_BOOTSTRAP; "
    "default 127.0.0.1:9092].",
)
@click.option(
    "--redis-url",
    metavar="URL",
    help="Redis URL [env STREAMINFER_REDIS_URL or REDIS_URL; default redis://127.0.0.1:6379/0]; "
    "redis+cluster://HOST:PORT[,..] for a Redis Cluster.",
)
@click.option(
    "--redis-cluster",
    is_flag=True,
    default=None,
    help="The Redis URL names a Redis Cluster node (same as redis+cluster://) "
    "[env STREAMINFER_REDIS_CLUSTER].",
)
@click.option(
    "--schema-registry",
    "schema_registry_url",
    metavar="URL",
    help="Confluent Schema Registry URL; when set, Avro uses registry framing "
    "(mock://NAME for an in-process registry).",
)
@click.option(
    "--wire-format",
    type=click.Choice(["auto", "single-object", "confluent", "json"]),
    help="Encoding of records written to Kafka (reading accepts all of them). "
    "auto = confluent with a registry, else Avro single-object.",
)
@click.option(
    "-X",
    "kafka_properties",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_property,
    help="confluent-kafka client property passed through (SASL/TLS...), repeatable, like kcat.",
)
@click.pass_context
def main(ctx: click.Context, **options: Any) -> None:
    """streaminfer: Kafka-native streaming inference and online learning with PyTorch.

    \b
    Quick start on a fresh machine:
      streaminfer dev up          # real Kafka (KRaft) + Redis on 127.0.0.1
      streaminfer demo            # workers, synthetic events, live stats
      streaminfer dev down

    Every setting can also be given as an environment variable STREAMINFER_<SETTING>
    (e.g. STREAMINFER_BOOTSTRAP_SERVERS, STREAMINFER_BATCH_MAX_RECORDS); see the README.
    """
    if not options.get("kafka_properties"):
        options.pop("kafka_properties", None)
    ctx.obj = {k: v for k, v in options.items() if v is not None}
