"""``streaminfer consume``: print records as JSON lines, whatever their wire format."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import click
from confluent_kafka import KafkaError, TopicPartition

from streaminfer.connectors.avro import RecordCodec, WriterSchemaDecoder
from streaminfer.connectors.kafka import make_consumer
from streaminfer.errors import DecodeError
from streaminfer.streams.cli._common import kafka_config, settings_from

__all__ = ["consume", "record_to_json"]

def record_to_json(msg: Any, codec: RecordCodec | WriterSchemaDecoder) -> dict[str, Any]:
    """One consumed message as the JSON object ``consume`` prints."""
    key = msg.key()
    _, ts = msg.timestamp()
    out: dict[str, Any] = {
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "timestamp": ts, "key": key.decode(errors="replace") if key is not None else None,
    }
    try:
        out["value"] = codec.decode(msg.value())
    except DecodeError as exc:
        out["error"] = str(exc)
        raw = msg.value() or b""
        out["raw"] = raw[:200].decode(errors="replace")
    headers = msg.headers()
    if headers:
        out["headers"] = {k: (v.decode(errors="replace") if v else None) for k, v in headers}
    return out


@click.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the earliest offset (else: new "
              "records only, unless the group has committed offsets).")
@click.option("--max", "max_records", type=click.IntRange(min=1),
              help="Stop after this many records.")
@click.option("--group", metavar="G",
              help="Consumer group; commits its offsets. Default: a throwaway group, no commits.")
@click.option("--timeout", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Stop after this many seconds without a record (0 = wait forever).")
@click.option("--schema", "schema_name",
              type=click.Choice(["event", "feedback", "rating", "prediction", "dead_letter"]),
              help="Reader schema for Avro records [default: each record's writer schema, "
              "which it names: a shipped schema's single-object fingerprint or a registry "
              "schema id].")
@click.pass_context
def consume(ctx: click.Context, topic: str, from_beginning: bool, max_records: int | None,
            group: str | None, timeout: float, schema_name: str | None) -> None:
    """Print one JSON object per record of TOPIC (decoded value, partition, offset, timestamp).

    Reads Avro single-object, Schema Registry framed Avro and JSON records alike.
    """
    settings = settings_from(ctx)
    registry = settings.schema_registry_url
    codec = (RecordCodec(schema_name, "json", registry_url=registry, topic=topic)
             if schema_name else WriterSchemaDecoder(registry_url=registry, topic=topic))
    commit = group is not None
    consumer = make_consumer(
        kafka_config(settings), group or f"streaminfer-consume-{uuid.uuid4().hex[:8]}",
        **{"auto.offset.reset": "earliest" if from_beginning else "latest",
           "enable.auto.commit": commit},
    )

    def on_assign(c: Any, partitions: list[TopicPartition]) -> None:
        if from_beginning and not commit:
            for p in partitions:
                p.offset = -2  # OFFSET_BEGINNING
            c.assign(partitions)

    consumer.subscribe([topic], on_assign=on_assign)
    seen, idle_since = 0, time.monotonic()
    try:
        while max_records is None or seen < max_records:
            msg = consumer.poll(0.5)
            if msg is None:
                if timeout and time.monotonic() - idle_since > timeout:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise click.ClickException(f"topic {topic!r} does not exist")
                click.echo(f"kafka error: {msg.error()}", err=True)
                continue
            idle_since = time.monotonic()
            click.echo(json.dumps(record_to_json(msg, codec)))
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
