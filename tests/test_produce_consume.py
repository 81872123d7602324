"""``streaminfer produce`` / ``consume`` round trips on the real broker, in every wire format."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streaminfer.connectors.avro import RecordCodec, registry_client
from streaminfer.connectors.kafka import make_producer
from streaminfer.streams.cli import main

pytestmark = pytest.mark.services


def _cli(services: Any, *args: str, input: str | None = None) -> Any:
    runner = CliRunner()
    result = runner.invoke(
        main, ["--bootstrap", services.bootstrap, "--redis-url", services.redis_url, *args],
        input=input, catch_exceptions=False,
    )
    return result


def _consume_json(services: Any, topic: str, count: int, *extra: str) -> list[dict[str, Any]]:
    result = _cli(services, *extra, "consume", topic, "--from-beginning", "--max", str(count),
                  "--timeout", "20")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("wire", ["single-object", "confluent", "json"])
def test_10k_synthetic_events_round_trip_with_keys_and_timestamps(
    services: Any, new_topic: Any, wire: str
) -> None:
    topic = new_topic(partitions=3)
    # the in-process mock registry is shared by produce and consume (both run in this process)
    fmt = ["--schema-registry", "mock://round-trip"] if wire == "confluent" else []
    result = _cli(services, *fmt, "--wire-format", wire, "produce", topic, "--synthetic",
                  "classifier", "--count", "10000", "--seed", "3", "-q")
    assert result.exit_code == 0, result.output
    assert "sent 10,000" in result.stderr and "failed 0" in result.stderr
    records = _consume_json(services, topic, 10_000, *fmt)
    assert len(records) == 10_000
    assert len({r["value"]["event_id"] for r in records}) == 10_000
    first = records[0]["value"]
    assert isinstance(first["ts"], int) and isinstance(first["features"][0], float)
    for r in records[:500]:
        assert r["key"] == r["value"]["key"]
        assert r["timestamp"] == r["value"]["ts"]  # record timestamp = event time
        assert len(r["value"]["features"]) == 8


def test_registry_framed_records_are_readable_by_a_plain_confluent_consumer(
    services: Any, new_topic: Any
) -> None:
    topic = new_topic(partitions=1)
    url = "mock://produce-consume-test"
    result = _cli(services, "--schema-registry", url, "produce", topic, "--synthetic",
                  "classifier", "--count", "200", "-q")
    assert result.exit_code == 0, result.output
    deserialize = AvroDeserializer(registry_client(url))
    consumer = Consumer({"bootstrap.servers": services.bootstrap, "group.id": "plain-sr",
                         "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = []
    while len(got) < 200:
        msgs = consumer.consume(200, 10)
        assert msgs, "no records"
        got += [deserialize(m.value(), SerializationContext(topic, MessageField.VALUE))
                for m in msgs]
    consumer.close()
    assert got[0]["event_id"] == "c0-0" and len(got[0]["features"]) == 8


def test_json_published_by_kcat_is_read_by_consume(services: Any, new_topic: Any) -> None:
    topic = new_topic(partitions=1)
    line = '{"event_id": "k1", "key": "user-1", "ts": 1764120000000, "features": [1.5, 2]}'
    subprocess.run(["kcat", "-P", "-b", services.bootstrap, "-t", topic, "-k", "user-1"],
                   input=line.encode() + b"\n", check=True, timeout=30)
    [record] = _consume_json(services, topic, 1)
    assert record["key"] == "user-1"
    assert record["value"] == json.loads(line)


def test_file_input_jsonl_and_csv(services: Any, new_topic: Any, tmp_path: Path) -> None:
    topic = new_topic(partitions=1)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(
        '{"event_id": "j1", "key": "a", "when": "2025-11-26T01:20:00Z", "features": [1, 2]}\n'
        '{"event_id": "j2", "key": "b", "features": [3, 4]}\n'
    )
    csv = tmp_path / "events.csv"
    csv.write_text("event_id,key,when,features\nc1,a,1764120000000,1 2\n")
    for path in (jsonl, csv):
        result = _cli(services, "produce", topic, "--file", str(path), "--ts-field", "when",
                      "-q")
        assert result.exit_code == 0, result.output
    records = _consume_json(services, topic, 3)
    by_id = {r["value"]["event_id"]: r for r in records}
    assert by_id["j1"]["timestamp"] == 1_764_120_000_000
    assert by_id["j2"]["timestamp"] > 1_764_120_000_000  # no time given: stamped "now"
    assert by_id["c1"]["value"]["features"] == [1.0, 2.0]


def test_malformed_line_stops_with_its_number_or_is_counted(
    services: Any, new_topic: Any, tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"event_id": "ok1", "key": "a", "ts": 1764120000000, "features": [1]}\n'
        '{"event_id": "bad", "key": "a", "ts": "soon", "features": [1]}\n'
        "not json at all\n"
        '{"event_id": "ok2", "key": "a", "ts": 1764120000000, "features": [1]}\n'
    )
    stopped = _cli(services, "produce", topic, "--file", str(path), "-q")
    assert stopped.exit_code != 0
    assert f"{path}:2" in stopped.output and "'ts'" in stopped.output

    skipped = _cli(services, "produce", topic, "--file", str(path), "--skip-bad", "-q")
    assert skipped.exit_code == 0, skipped.output
    assert "sent 2" in skipped.stderr and "skipped 2 bad lines" in skipped.stderr
    assert f"{path}:3: invalid JSON" in skipped.stderr


def test_bad_config_names_the_field(services: Any) -> None:
    result = CliRunner().invoke(main, ["--redis-url", "http://nope", "consume", "x"])
    assert result.exit_code != 0
    assert "redis_url" in result.output


@pytest.mark.parametrize("wire", ["single-object", "confluent"])
def test_consume_reads_with_the_writer_schema_the_record_names(
    services: Any, new_topic: Any, wire: str
) -> None:
    # a predictions topic whose name says nothing about its schema, and a rating on it too
    topic = new_topic(partitions=1, prefix="scores-out")
    registry = ["--schema-registry", "mock://writer-schema"] if wire == "confluent" else []
    url = registry[1] if registry else None
    producer = make_producer({"bootstrap.servers": services.bootstrap})
    prediction = {"event_id": "e1", "key": "k1", "model_name": "classifier",
                  "model_version": "v1+u3", "score": 0.25, "scores": [], "event_ts": 1000,
                  "processed_ts": 1005}
    rating = {"event_id": "r1", "user": "u1", "item": "i9", "rating": 4.0, "ts": 2000}
    for schema, record in (("prediction", prediction), ("rating", rating)):
        codec = RecordCodec(schema, wire, registry_url=url, topic=topic)
        producer.produce(topic, codec.encode(record), b"k")
    producer.produce(topic, b"\xc3\x01" + bytes(8) + b"x", b"k")  # a fingerprint nobody knows
    assert producer.flush(10) == 0

    records = _consume_json(services, topic, 3, *registry)

    # the prediction schema's optional fields come back with their defaults
    written = {**prediction, "degraded": False, "fallback": None}
    assert [r.get("value") for r in records[:2]] == [written, rating]
    assert "unknown writer schema fingerprint 0000000000000000" in records[2]["error"]
    assert "--schema" in records[2]["error"]
