"""``streaminfer produce``: publish records from a file or a synthetic generator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streaminfer.connectors.avro import RecordCodec, load_schema, make_codec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.publish import publish_chunks
from streaminfer.connectors.sources import (
    FileSource,
    LineError,
    SyntheticClassifier,
    SyntheticRatings,
)
from streaminfer.streams.cli._common import kafka_config, settings_from

__all__ = ["produce"]

KEY_FIELDS = {"event": "key", "feedback": "key", "rating": "user"}
SYNTHETIC_SCHEMA = {"classifier": "event", "ratings": "rating"}


def _file_chunks(
    source: FileSource, skip_bad: bool, bad: list[LineError], chunk: int = 5000
) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in source:
        if isinstance(item, LineError):
            if not skip_bad:
                raise click.ClickException(f"bad input at {item} (use --skip-bad to skip)")
            bad.append(item)
            continue
        batch.append(item)
        if len(batch) >= chunk:
            yield batch
            batch = []
    if batch:
        yield batch


@click.command()
@click.argument("topic")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL or CSV file of records (CSV: a header row; list cells as JSON or "
              "space-separated).")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto",
              show_default=True, help="File format; auto = by extension.")
@click.option("--schema", "schema_name", metavar="NAME|FILE.avsc",
              help="Record type to publish: a shipped schema (event, feedback, rating) or an "
              ".avsc file [default: event, or what --synthetic makes].")
@click.option("--app", "app_spec", metavar="NAME|MODULE:ATTR",
              help="Publish the input records of this app: its schema, key field and "
              "event-time field (the working directory is importable, as for worker).")
@click.option("--key-field", metavar="NAME",
              help="Field whose value is the Kafka key [default: the app's or schema's key].")
@click.option("--ts-field", metavar="NAME",
              help="Input field holding event time (epoch ms/s or ISO-8601) [default: ts]; "
              "records without it get the current time.")
@click.option("--synthetic", type=click.Choice(sorted(SYNTHETIC_SCHEMA)),
              help="Generate events instead of reading a file.")
@click.option("--feedback-topic", metavar="TOPIC",
              help="With --synthetic classifier: also publish each event's label there.")
@click.option("--count", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Synthetic: how many events. File: at most this many (0 = all).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Synthetic: random seed (same seed, same events).")
@click.option("--num-features", type=click.IntRange(min=1), default=8, show_default=True,
              help="Synthetic classifier: feature vector length.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Events per second; 0 = as fast as possible.")
@click.option("--skip-bad", is_flag=True,
              help="Count and report malformed input lines instead of stopping at the first.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def produce(ctx: click.Context, topic: str, path: Path | None, fmt: str, schema_name: str | None,
            app_spec: str | None, key_field: str | None, ts_field: str | None,
            synthetic: str | None, feedback_topic: str | None, count: int, seed: int,
            num_features: int, rate: float, skip_bad: bool, quiet: bool) -> None:
    """Publish records to TOPIC: key = entity key, record timestamp = event time.

    \b
    Examples:
      streaminfer produce events --synthetic classifier --count 100000 --rate 5000
      streaminfer produce events --file events.jsonl --skip-bad
      streaminfer produce ratings --synthetic ratings --seed 7
      streaminfer produce customers --file customers.jsonl --app myapp:app
    """
    if (path is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --file or --synthetic")
    if feedback_topic and synthetic != "classifier":
        raise click.UsageError("--feedback-topic needs --synthetic classifier")
    if app_spec and (schema_name or synthetic):
        raise click.UsageError("--app names the schema: give it without --schema/--synthetic")
    settings = settings_from(ctx, num_features=num_features)
    wire = settings.effective_wire_format
    if app_spec:
        from streaminfer.errors import StreaminferError
        from streaminfer.streams.app import load_app

        try:
            app = load_app(app_spec, settings)
            schema = app.input_schema(settings.schema_registry_url)
        except StreaminferError as exc:
            raise click.ClickException(str(exc)) from None
        key_field = key_field or app.input.key
        ts_field = ts_field or app.input.event_time
    else:
        schema_name = schema_name or (SYNTHETIC_SCHEMA[synthetic] if synthetic else "event")
        try:
            schema = load_schema(schema_name)
        except (KeyError, OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--schema") from None
        key_field = key_field or KEY_FIELDS.get(schema_name)
    if not key_field:
        raise click.UsageError("--key-field is needed: the schema has no known key field")
    codec = RecordCodec(schema, wire, registry_url=settings.schema_registry_url, topic=topic)
    producer = make_producer(kafka_config(settings))
    bad: list[LineError] = []
    labels: list[Any] = []

    if path is not None:
        source = FileSource(path, schema, fmt=fmt, ts_field=ts_field)  # type: ignore[arg-type]
        chunks: Iterator[list[dict[str, Any]]] = _file_chunks(source, skip_bad, bad)
        if count:
            chunks = _limit(chunks, count)
        total = count or None
    else:
        gen = (SyntheticClassifier(seed, num_features) if synthetic == "classifier"
               else SyntheticRatings(seed))

        def synthetic_chunks() -> Iterator[list[dict[str, Any]]]:
            for events, chunk_labels in gen.chunks(count):
                labels.append((events, chunk_labels))
                yield events

        chunks = synthetic_chunks()
        total = count

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]:>9,.0f} ev/s"), TimeElapsedColumn(),
                  console=console, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task(f"produce {topic}", total=total, rate=0.0)

        def advance(n: int) -> None:
            bar.advance(task, n)
            elapsed = bar.tasks[0].elapsed or 0.0
            bar.update(task, rate=bar.tasks[0].completed / elapsed if elapsed else 0.0)

        report = publish_chunks(producer, topic, codec, chunks, key_field=key_field,
                                rate=rate, on_progress=advance)

    if feedback_topic:
        fb_codec = make_codec("feedback", wire, settings.schema_registry_url, feedback_topic)
        fb_chunks = (
            [{"event_id": e["event_id"], "key": e["key"], "label": float(y), "ts": e["ts"]}
             for e, y in zip(events, chunk_labels, strict=True)]
            for events, chunk_labels in labels
        )
        fb = publish_chunks(producer, feedback_topic, fb_codec, fb_chunks, key_field="key")
        console.print(f"feedback: sent {fb.sent:,} to {feedback_topic}, failed {fb.failed:,}")

    summary = (f"sent {report.sent:,} to {topic} in {report.seconds:.2f}s "
               f"({report.rate:,.0f} ev/s), failed {report.failed:,}")
    if bad:
        summary += f", skipped {len(bad):,} bad lines"
    click.echo(summary, err=True)
    for line in bad[:10]:
        click.echo(f"  skipped {line}", err=True)
    for example in report.failure_examples:
        click.echo(f"  failed {example}", err=True)
    if report.failed:
        sys.exit(1)


def _limit(chunks: Iterator[list[dict[str, Any]]], count: int) -> Iterator[list[dict[str, Any]]]:
    left = count
    for chunk in chunks:
        if left <= 0:
            return
        yield chunk[:left]
        left -= len(chunk)


