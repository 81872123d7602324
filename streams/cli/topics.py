"""``streaminfer topics``: create (idempotently) and list Kafka topics."""

from __future__ import annotations

import click

from streaminfer.connectors.admin import AdminError, ensure_topics, list_topics
from streaminfer.streams.cli._common import settings_from
from streaminfer.streams.settings import Settings

__all__ = ["topics"]


def _app_topics(settings: Settings) -> list[str]:
    """The topics a streaminfer deployment reads and writes, dead-letter topics included."""
    inputs = [settings.events_topic, settings.feedback_topic, settings.ratings_topic]
    return [*inputs, *(settings.dlq_topic(t) for t in inputs), settings.predictions_topic]


@click.group()
def topics() -> None:
    """Create and list Kafka topics.

    Create topics before starting workers: a worker subscribes only to topics that exist when it
    joins its group, and a topic auto-created by a first produce gets the broker's default
    partition count, which then caps how many workers can share the load.
    """


@topics.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option(
    "-p",
    "--partitions",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Partitions per topic: the most workers that can consume it in parallel.",
)
@click.option(
    "-r",
    "--replication",
    "topic_replication_factor",
    type=click.IntRange(1, 32),
    help="Replication factor [env STREAMINFER_TOPIC_REPLICATION_FACTOR; default 1, for the "
    "single-node dev broker; production: 3].",
)
@click.option(
    "--min-insync-replicas",
    "topic_min_insync_replicas",
    type=click.IntRange(1, 32),
    help="min.insync.replicas [env STREAMINFER_TOPIC_MIN_INSYNC_REPLICAS; default 1; "
    "production: 2].",
)
@click.pass_context
def create(ctx: click.Context, names: tuple[str, ...], partitions: int,
           **policy: int | None) -> None:
    """Create topics NAME... if missing; existing ones are left as they are.

    With no NAME, creates the configured app topics (events, feedback, ratings, their
    dead-letter topics, predictions). Exits 1 if a topic exists with another partition count.
    """
    settings = settings_from(ctx, **policy)
    wanted = list(dict.fromkeys(names)) or _app_topics(settings)
    try:
        statuses = ensure_topics(
            settings.kafka_config(), dict.fromkeys(wanted, partitions), **settings.topic_policy()
        )
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    for status in statuses:
        click.echo(status.describe(), err=status.mismatch)
    if any(status.mismatch for status in statuses):
        ctx.exit(1)


@topics.command("list")
@click.option("-a", "--all", "include_internal", is_flag=True,
              help="Include internal topics (__consumer_offsets, ...).")
@click.pass_context
def list_(ctx: click.Context, include_internal: bool) -> None:
    """List topics with their partition counts, one per line: NAME<TAB>PARTITIONS."""
    settings = settings_from(ctx)
    try:
        infos = list_topics(settings.kafka_config(), include_internal=include_internal)
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    for info in infos:
        click.echo(f"{info.name}\t{info.partitions}")

