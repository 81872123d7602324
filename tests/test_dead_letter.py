"""The Kafka side of the output path against the real broker: dead letters keep the raw bytes
plus headers saying where and why, and the predictions topic gets one keyed, event-timed
record per prediction, confirmed before ``write_batch`` returns."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.dead_letter import DECODE, VALIDATION, DeadLetterWriter
from streaminfer.connectors.predictions_sink import PredictionsDeliveryError, PredictionsTopicSink
from streaminfer.connectors.redis_sink import PredictionRow
from streaminfer.errors import DeadLetterError

# Nothing listens here: every delivery times out, which is how a broker outage looks.
_DEAD_BROKER = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "log_level": 0}


def _read(settings: Any, topic: str, count: int, timeout_s: float = 20.0) -> list[Message]:
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    got: list[Message] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=count - len(got), timeout=0.5):
                if msg.error() is None:
                    got.append(msg)
    finally:
        consumer.close()
    return got


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _headers(msg: Message) -> dict[str, str]:
    return {k: v.decode() for k, v in msg.headers() or []}


# -- dead letters ---------------------------------------------------------------------------


def test_dead_letter_keeps_raw_bytes_and_says_where_and_why(
    services: Any, settings: Any, new_topic: Callable[..., str]
):
    dlq = new_topic()
    writer = DeadLetterWriter(settings.kafka_config(), lambda topic: dlq)
    raw_value = b"\xc3\x01not-avro\xff\x00"
    before_ms = _now_ms()

    writer.send("events", 3, 1234, b"user-7", raw_value, "field 'ts': expected a timestamp", DECODE)
    writer.send("events", 0, 99, None, None, "empty record", VALIDATION)
    writer.flush()

    first, second = _read(settings, dlq, 2)
    assert first.value() == raw_value
    assert first.key() == b"user-7"
    headers = _headers(first)
    assert headers == {
        "streaminfer.reason": "field 'ts': expected a timestamp",
        "streaminfer.error_type": "decode",
        "streaminfer.source_topic": "events",
        "streaminfer.source_partition": "3",
        "streaminfer.source_offset": "1234",
        "streaminfer.failed_ts": headers["streaminfer.failed_ts"],
    }
    assert before_ms <= int(headers["streaminfer.failed_ts"]) <= _now_ms()
    assert first.timestamp() == (TIMESTAMP_CREATE_TIME, int(headers["streaminfer.failed_ts"]))
    assert (second.key(), second.value()) == (None, None)
    assert _headers(second)["streaminfer.source_offset"] == "99"
    assert writer.sent == {"decode": 1, "validation": 1}


def test_dead_letter_topic_defaults_to_source_plus_suffix():
    assert DeadLetterWriter(_DEAD_BROKER).dlq_topic("events") == "events.dlq"
    assert DeadLetterWriter(_DEAD_BROKER, suffix="-dead").dlq_topic("ratings") == "ratings-dead"


def test_flush_names_the_source_record_of_an_undelivered_dead_letter():
    writer = DeadLetterWriter(_DEAD_BROKER)
    writer.send("events", 2, 77, b"k", b"v", "bad", DECODE)

    with pytest.raises(DeadLetterError, match=r"events\[2\]@77 -> events\.dlq"):
        writer.flush()


# -- predictions topic ----------------------------------------------------------------------


def _prediction(i: int) -> PredictionRow:
    return PredictionRow(
        event_id=f"ev-{i:05d}",
        key=f"user-{i % 13}",
        score=i / 256,  # exactly representable as an Avro float
        model_version="logreg-1.3",
        event_ts=1_700_000_000_000 + i * 1_000,
        processed_ts=1_700_000_000_050 + i * 1_000,
        model_name="logreg",
        scores=(0.5, 0.25),
    )


def test_predictions_arrive_keyed_and_stamped_with_event_time(
    services: Any, settings: Any, new_topic: Callable[..., str]
):
    topic = new_topic(partitions=3)
    codec = RecordCodec("prediction", "single-object")
    sink = PredictionsTopicSink(settings.kafka_config(), topic, codec.encode)
    rows = [_prediction(i) for i in range(200)]

    sink.write_batch(rows[:150])
    sink.write_batch(rows[150:])

    got = _read(settings, topic, len(rows))
    assert len(got) == len(rows)
    by_id = {codec.decode(m.value())["event_id"]: m for m in got}
    for row in rows:
        msg = by_id[row.event_id]
        assert msg.key() == row.key.encode()
        assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, row.event_ts)
        assert codec.decode(msg.value()) == row.as_dict()
    partitions_of_key: dict[bytes, set[int]] = {}
    for msg in got:
        partitions_of_key.setdefault(msg.key(), set()).add(msg.partition())
    assert all(len(p) == 1 for p in partitions_of_key.values())


def test_batch_encoder_is_used_when_given(
    services: Any, settings: Any, new_topic: Callable[..., str]
):
    topic = new_topic()
    codec = RecordCodec("prediction", "single-object")
    sink = PredictionsTopicSink(
        settings.kafka_config(), topic, codec.encode, encode_many=codec.encode_many
    )

    sink.write_batch([_prediction(i) for i in range(10)])

    got = _read(settings, topic, 10)
    assert sorted(codec.decode(m.value())["event_id"] for m in got) == [
        f"ev-{i:05d}" for i in range(10)
    ]


def test_undelivered_predictions_raise_naming_the_records():
    sink = PredictionsTopicSink(_DEAD_BROKER, "predictions", lambda record: b"x")

    with pytest.raises(
        PredictionsDeliveryError, match=r"2 of 2 records to topic 'predictions'"
    ) as info:
        sink.write_batch([_prediction(1), _prediction(2)])

    assert "event_id='ev-00001' key='user-1' event_ts=1700000001000" in str(info.value)
    assert {f.key for f in info.value.failed} == {"user-1", "user-2"}
